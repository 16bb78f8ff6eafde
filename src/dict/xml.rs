//! The XML loader: `<diameter><application><command|avp>…` (see `dictionaries/FORMAT.md`).

use roxmltree::{Document, Node};

use super::{ApplicationDef, AvpDef, CommandDef, DataType, DictError, Dictionary, EnumItem, FlagRule, Grammar, Rule};

struct Ctx<'a> {
    file: &'a str,
    doc: &'a Document<'a>,
}

impl Ctx<'_> {
    fn err(&self, node: Node, what: impl Into<String>) -> DictError {
        DictError::Invalid {
            file: self.file.to_string(),
            line: self.doc.text_pos_at(node.range().start).row,
            what: what.into(),
        }
    }

    fn attr<'n>(&self, node: Node<'n, 'n>, name: &str) -> Result<&'n str, DictError> {
        node.attribute(name)
            .ok_or_else(|| self.err(node, format!("<{}> needs attribute {name}", node.tag_name().name())))
    }

    fn number<T: std::str::FromStr>(&self, node: Node, name: &str, text: &str) -> Result<T, DictError> {
        text.trim().parse().map_err(|_| self.err(node, format!("attribute {name}={text:?} is not a valid number")))
    }

    fn flags(&self, node: Node, name: &str) -> Result<FlagRule, DictError> {
        match node.attribute(name) {
            None => Ok(FlagRule::default()),
            Some(s) => FlagRule::parse(s)
                .ok_or_else(|| self.err(node, format!("{name}={s:?}: flags are V, M, P separated by commas, or -"))),
        }
    }

    fn grammar(&self, node: Node) -> Result<Grammar, DictError> {
        let mut rules = Vec::new();
        for r in node.children().filter(|n| n.has_tag_name("rule")) {
            let name = self.attr(r, "avp")?.to_string();
            let required = match r.attribute("required") {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => {
                    return Err(self.err(r, format!("required={other:?}: use true or false")));
                }
            };
            let min = match r.attribute("min") {
                Some(m) => self.number(r, "min", m)?,
                None => u32::from(required),
            };
            let max = r.attribute("max").map(|m| self.number(r, "max", m)).transpose()?;
            if max.is_some_and(|m| m < min) {
                return Err(self.err(r, format!("rule for {name}: max is below min")));
            }
            rules.push(Rule { name, avp: None, min, max });
        }
        Ok(Grammar { rules })
    }
}

pub(super) fn load(dict: &mut Dictionary, file: &str, text: &str) -> Result<(), DictError> {
    let doc = Document::parse(text).map_err(|source| DictError::Xml { file: file.to_string(), source })?;
    let cx = Ctx { file, doc: &doc };
    let root = doc.root_element();
    if !root.has_tag_name("diameter") {
        return Err(cx.err(root, "the root element must be <diameter>"));
    }
    for app in root.children().filter(|n| n.has_tag_name("application")) {
        let id: u32 = cx.number(app, "id", cx.attr(app, "id")?)?;
        let vendors = app
            .children()
            .filter(|n| n.has_tag_name("vendor"))
            .map(|v| cx.number(v, "id", cx.attr(v, "id")?))
            .collect::<Result<Vec<u32>, _>>()?;
        dict.insert_application(ApplicationDef {
            id,
            name: app.attribute("name").unwrap_or_default().to_string(),
            kind: app.attribute("type").unwrap_or_default().to_string(),
            vendors,
        });
        for node in app.children().filter(Node::is_element) {
            match node.tag_name().name() {
                "command" => {
                    let child = |tag| node.children().find(|n| n.has_tag_name(tag));
                    let request = child("request").map(|n| cx.grammar(n)).transpose()?.unwrap_or_default();
                    let answer = child("answer").map(|n| cx.grammar(n)).transpose()?.unwrap_or_default();
                    let def = CommandDef {
                        code: cx.number(node, "code", cx.attr(node, "code")?)?,
                        name: cx.attr(node, "name")?.to_string(),
                        short: node.attribute("short").unwrap_or_default().to_string(),
                        request,
                        answer,
                        file: file.to_string(),
                    };
                    dict.insert_command(id, def);
                }
                "avp" => {
                    let def = load_avp(&cx, node, id)?;
                    dict.insert_avp(def);
                }
                "vendor" => {}
                other => return Err(cx.err(node, format!("unexpected <{other}> in <application>"))),
            }
        }
    }
    Ok(())
}

fn load_avp(cx: &Ctx, node: Node, application: u32) -> Result<AvpDef, DictError> {
    let name = cx.attr(node, "name")?.to_string();
    let data = node
        .children()
        .find(|n| n.has_tag_name("data"))
        .ok_or_else(|| cx.err(node, format!("AVP {name} has no <data type=…>")))?;
    let ty = cx.attr(data, "type")?;
    let data_type = DataType::parse(ty).ok_or_else(|| {
        cx.err(data, format!("AVP {name}: unknown data type {ty:?} (RFC 6733 §4.2/§4.3 formats or QoSFilterRule)"))
    })?;
    let mut items = Vec::new();
    for item in data.children().filter(|n| n.has_tag_name("item")) {
        let code: i64 = cx.number(item, "code", cx.attr(item, "code")?)?;
        // Enumerated is Integer32; some files write large values unsigned.
        let code = i32::try_from(code)
            .or_else(|_| u32::try_from(code).map(|c| c as i32))
            .map_err(|_| cx.err(item, format!("AVP {name}: value {code} does not fit Integer32")))?;
        items.push(EnumItem { code, name: cx.attr(item, "name")?.to_string() });
    }
    let grammar = (data_type == DataType::Grouped).then(|| cx.grammar(data)).transpose()?;
    let vendor = node.attribute("vendor-id").map(|v| cx.number(node, "vendor-id", v)).transpose()?.unwrap_or(0);
    Ok(AvpDef {
        code: cx.number(node, "code", cx.attr(node, "code")?)?,
        vendor,
        data_type,
        must: cx.flags(node, "must")?,
        may: cx.flags(node, "may")?,
        must_not: cx.flags(node, "must-not")?,
        items,
        grammar,
        application,
        file: cx.file.to_string(),
        name,
    })
}
