//! Self-checks of a loaded dictionary: what a wrong transcription from a specification looks like.

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::{DataType, Dictionary, Grammar};
use crate::codec::AvpFlags;

/// One problem found by [`Dictionary::lint`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LintFinding {
    /// The file.
    pub file: String,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for LintFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.problem)
    }
}

fn clean(name: &str) -> bool {
    !name.is_empty() && name.trim() == name && !name.contains(['\n', '\t', '\r'])
}

impl Dictionary {
    /// Checks: every grammar rule names a defined AVP and appears once per grammar; no (code, vendor) or name is
    /// defined twice; Enumerated values are unique by code and by name; names carry no stray whitespace;
    /// Grouped AVPs have a grammar and only Enumerated AVPs have values; vendor AVPs have V in `must` and
    /// base AVPs have V in `must-not` or nowhere; no flag is both required and forbidden.
    pub fn lint(&self) -> Vec<LintFinding> {
        let mut out = Vec::new();
        let mut push = |file: &str, problem: String| out.push(LintFinding { file: file.to_string(), problem });
        for (name, old, new) in &self.overrides {
            push(new, format!("{name} is defined again (first in {old})"));
        }
        let mut grammar_check = |file: &str, owner: &str, g: &Grammar| {
            let mut seen = HashSet::new();
            for r in &g.rules {
                if r.avp.is_none() {
                    push(file, format!("{owner}: rule names undefined AVP {:?}", r.name));
                }
                if !seen.insert(&r.name) {
                    push(file, format!("{owner}: AVP {} has two rules", r.name));
                }
                if !clean(&r.name) {
                    push(file, format!("{owner}: rule name {:?} has stray whitespace", r.name));
                }
            }
        };
        for def in &self.avps {
            if let Some(g) = &def.grammar {
                grammar_check(&def.file, &def.name, g);
            }
        }
        let mut cmds: Vec<_> = self.commands.values().collect();
        cmds.sort_by_key(|c| (c.file.clone(), c.code));
        for c in cmds {
            grammar_check(&c.file, &format!("{}-Request", c.name), &c.request);
            grammar_check(&c.file, &format!("{}-Answer", c.name), &c.answer);
        }
        for def in &self.avps {
            let mut push = |problem: String| out.push(LintFinding { file: def.file.clone(), problem });
            if !clean(&def.name) {
                push(format!("AVP name {:?} has stray whitespace", def.name));
            }
            if def.data_type == DataType::Grouped
                && def.grammar.as_ref().is_none_or(|g| g.rules.is_empty())
                && def.name != "Failed-AVP"
            {
                push(format!("Grouped AVP {} has no member rules", def.name));
            }
            if def.data_type != DataType::Enumerated && !def.items.is_empty() {
                push(format!("{} is {} but lists enumerated values", def.name, def.data_type));
            }
            let mut codes = HashSet::new();
            let mut names = HashMap::new();
            for item in &def.items {
                if !codes.insert(item.code) {
                    push(format!("{}: value {} listed twice", def.name, item.code));
                }
                if names.insert(item.name.as_str(), item.code).is_some() {
                    push(format!("{}: value name {:?} listed twice", def.name, item.name));
                }
                if !clean(&item.name) {
                    push(format!("{}: value name {:?} has stray whitespace", def.name, item.name));
                }
            }
            if def.must.0 & def.must_not.0 != 0 {
                push(format!("{}: a flag is in both must and must-not", def.name));
            }
            let v_required = def.must.has(AvpFlags::VENDOR);
            if (def.vendor != 0) != v_required {
                push(format!(
                    "{}: vendor-id {} but V {} in must",
                    def.name,
                    def.vendor,
                    if v_required { "is" } else { "is not" }
                ));
            }
        }
        out
    }
}
