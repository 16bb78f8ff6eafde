//! Diameter dictionaries: AVP definitions, command grammars and applications, loaded from XML
//! (the go-diameter / diameter-rs layout, see `dictionaries/FORMAT.md`).
//!
//! Sans-IO. The shipped files (RFC 6733 base, RFC 4006/8506 credit control, 3GPP common, Ro per TS 32.299, Gx per
//! TS 29.212) are embedded with `include_str!` and loaded by [`Dictionary::builtin`]; more files are added with
//! [`Dictionary::load_xml`]. A dictionary validates messages ([`Dictionary::validate`]) and answers with the
//! Result-Code RFC 6733 §7 requires, names AVPs for display ([`Dictionary::display`]), builds AVPs by name
//! ([`Dictionary::avp`]), and checks itself ([`Dictionary::lint`]).

mod display;
mod lint;
mod validate;
mod xml;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use bytes::Bytes;

use crate::codec::value::{Address, Time};
use crate::codec::{AppId, Avp, AvpFlags, CommandCode, VendorId};

pub use lint::LintFinding;

/// The shipped dictionary files, in load order (a file may only refer to AVPs of itself or earlier files'
/// applications, but rules are resolved after all are loaded, so the order only matters for overrides).
pub const BUILTIN_FILES: &[(&str, &str)] = &[
    ("base.xml", include_str!("../../dictionaries/base.xml")),
    ("credit-control.xml", include_str!("../../dictionaries/credit-control.xml")),
    ("3gpp-common.xml", include_str!("../../dictionaries/3gpp-common.xml")),
    ("ro.xml", include_str!("../../dictionaries/ro.xml")),
    ("gx.xml", include_str!("../../dictionaries/gx.xml")),
];

/// RFC 6733 §4.2 and §4.3 data formats, plus QoSFilterRule (RFC 3588 §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum DataType {
    OctetString,
    Integer32,
    Integer64,
    Unsigned32,
    Unsigned64,
    Float32,
    Float64,
    Grouped,
    Address,
    Time,
    UTF8String,
    DiameterIdentity,
    DiameterURI,
    Enumerated,
    IPFilterRule,
    QoSFilterRule,
}

impl DataType {
    /// Parses a `<data type>` attribute. Accepts the aliases some published dictionaries use.
    pub fn parse(s: &str) -> Option<DataType> {
        use DataType::*;
        Some(match s {
            "OctetString" | "IPv4" | "IPv6" => OctetString,
            "Integer32" => Integer32,
            "Integer64" => Integer64,
            "Unsigned32" | "VendorId" | "AppId" => Unsigned32,
            "Unsigned64" => Unsigned64,
            "Float32" => Float32,
            "Float64" => Float64,
            "Grouped" => Grouped,
            "Address" => Address,
            "Time" => Time,
            "UTF8String" | "Utf8String" => UTF8String,
            "DiameterIdentity" | "DiamIdent" => DiameterIdentity,
            "DiameterURI" | "DiamURI" => DiameterURI,
            "Enumerated" => Enumerated,
            "IPFilterRule" => IPFilterRule,
            "QoSFilterRule" => QoSFilterRule,
            _ => return None,
        })
    }

    /// The smallest valid payload, zero-filled, for the Failed-AVP of a missing AVP (RFC 6733 §7.5).
    fn minimum_payload(self) -> Bytes {
        use DataType::*;
        match self {
            Integer32 | Unsigned32 | Float32 | Time | Enumerated => Bytes::from_static(&[0; 4]),
            Integer64 | Unsigned64 | Float64 => Bytes::from_static(&[0; 8]),
            Address => Bytes::from_static(&[0, 1, 0, 0, 0, 0]),
            _ => Bytes::new(),
        }
    }
}

/// AVP flag bits as the `must` / `may` / `must-not` columns write them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlagRule(pub u8);

impl FlagRule {
    fn parse(s: &str) -> Option<FlagRule> {
        let mut bits = 0;
        for part in s.split([',', ' ']).map(str::trim).filter(|p| !p.is_empty() && *p != "-") {
            bits |= match part {
                "V" | "v" => AvpFlags::VENDOR,
                "M" | "m" => AvpFlags::MANDATORY,
                "P" | "p" => AvpFlags::PROTECTED,
                _ => return None,
            };
        }
        Some(FlagRule(bits))
    }

    /// Whether the rule contains this flag bit.
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// One value of an Enumerated AVP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnumItem {
    /// The value.
    pub code: i32,
    /// Its name as the specification writes it.
    pub name: String,
}

/// One line of a grammar: an AVP and how often it may occur.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The AVP's name.
    pub name: String,
    /// Its index in the dictionary, once resolved.
    pub(crate) avp: Option<usize>,
    /// Fewest occurrences.
    pub min: u32,
    /// Most occurrences; `None` is unbounded. `Some(0)` forbids the AVP (5008).
    pub max: Option<u32>,
}

/// The ABNF of a command or Grouped AVP: rules in the specification's order; other AVPs are allowed
/// (`*[ AVP ]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grammar {
    /// The rules.
    pub rules: Vec<Rule>,
}

/// The definition of one AVP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AvpDef {
    /// The AVP's name.
    pub name: String,
    /// AVP Code.
    pub code: u32,
    /// Vendor-Id, 0 for none.
    pub vendor: u32,
    /// Data format.
    pub data_type: DataType,
    /// Flags that must be set.
    pub must: FlagRule,
    /// Flags that may be set.
    pub may: FlagRule,
    /// Flags that must not be set.
    pub must_not: FlagRule,
    /// Values of an Enumerated AVP.
    pub items: Vec<EnumItem>,
    /// Members of a Grouped AVP.
    pub grammar: Option<Grammar>,
    /// The application that defined it.
    pub application: u32,
    /// The file that defined it.
    pub file: String,
}

impl AvpDef {
    /// The name of an Enumerated value.
    pub fn item_name(&self, code: i32) -> Option<&str> {
        self.items.iter().find(|i| i.code == code).map(|i| i.name.as_str())
    }

    /// An AVP of this definition with this payload: code, vendor, and the M bit when the rules require it.
    pub fn make(&self, data: Bytes) -> Avp {
        let mut flags = 0;
        if self.must.has(AvpFlags::MANDATORY) {
            flags |= AvpFlags::MANDATORY;
        }
        let vendor = (self.vendor != 0).then_some(VendorId(self.vendor));
        Avp::new(self.code, AvpFlags(flags), vendor, data)
    }
}

/// A command: its name and the grammars of request and answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandDef {
    /// Command-Code.
    pub code: u32,
    /// The name without "-Request" / "-Answer", e.g. `Credit-Control`.
    pub name: String,
    /// The abbreviation without R/A, e.g. `CC`.
    pub short: String,
    /// The request ABNF.
    pub request: Grammar,
    /// The answer ABNF.
    pub answer: Grammar,
    /// The file that defined it.
    pub file: String,
}

/// An application as a dictionary file declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplicationDef {
    /// Application-Id.
    pub id: u32,
    /// Its name.
    pub name: String,
    /// `auth`, `acct` or `common`.
    pub kind: String,
    /// Vendors it declares.
    pub vendors: Vec<u32>,
}

/// Why a dictionary file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DictError {
    /// The file is not well-formed XML.
    #[error("dictionary {file}: not well-formed XML")]
    Xml {
        /// The file.
        file: String,
        /// The parser's error.
        source: roxmltree::Error,
    },
    /// An element or attribute is missing or has an invalid value.
    #[error("dictionary {file}, line {line}: {what}")]
    Invalid {
        /// The file.
        file: String,
        /// The 1-based line.
        line: u32,
        /// What is wrong and what is allowed.
        what: String,
    },
    /// No AVP of that name.
    #[error("no AVP named {0:?} in the dictionary")]
    UnknownAvp(String),
    /// The value does not fit the AVP's format.
    #[error("AVP {name} is {data_type:?}; {why}")]
    TypeMismatch {
        /// The AVP.
        name: String,
        /// Its format.
        data_type: DataType,
        /// What was given.
        why: String,
    },
}

/// A value for [`Dictionary::avp`], checked against the AVP's format.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum AvpValue<'a> {
    Int(i128),
    F32(f32),
    F64(f64),
    Str(&'a str),
    Octets(Bytes),
    Time(Time),
    Address(Address),
    Grouped(Vec<Avp>),
}

macro_rules! int_value {
    ($($t:ty),*) => {$(impl From<$t> for AvpValue<'_> { fn from(v: $t) -> Self { AvpValue::Int(i128::from(v)) } })*};
}
int_value!(u8, u16, u32, u64, i8, i16, i32, i64);
impl From<f32> for AvpValue<'_> {
    fn from(v: f32) -> Self {
        AvpValue::F32(v)
    }
}
impl From<f64> for AvpValue<'_> {
    fn from(v: f64) -> Self {
        AvpValue::F64(v)
    }
}
impl<'a> From<&'a str> for AvpValue<'a> {
    fn from(v: &'a str) -> Self {
        AvpValue::Str(v)
    }
}
impl From<Bytes> for AvpValue<'_> {
    fn from(v: Bytes) -> Self {
        AvpValue::Octets(v)
    }
}
impl From<Time> for AvpValue<'_> {
    fn from(v: Time) -> Self {
        AvpValue::Time(v)
    }
}
impl From<Address> for AvpValue<'_> {
    fn from(v: Address) -> Self {
        AvpValue::Address(v)
    }
}
impl From<Vec<Avp>> for AvpValue<'_> {
    fn from(v: Vec<Avp>) -> Self {
        AvpValue::Grouped(v)
    }
}

/// A fast hasher for the dictionary's integer keys (the AVP lookup is on the validation hot path; the keys are
/// not attacker-chosen in a way that matters: a collision costs a probe, never correctness).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 ^= self.0 >> 29;
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

fn key(code: u32, vendor: u32) -> u64 {
    u64::from(vendor) << 32 | u64::from(code)
}

/// A loaded set of dictionary files.
#[derive(Clone, Debug, Default)]
pub struct Dictionary {
    avps: Vec<AvpDef>,
    by_code: IdMap<usize>,
    by_name: HashMap<String, usize>,
    commands: IdMap<CommandDef>,
    applications: BTreeMap<u32, ApplicationDef>,
    /// Definitions a later file replaced: (name, file replaced, file replacing).
    overrides: Vec<(String, String, String)>,
    /// RFC 6733 §7.2 answer-message, for answers with the E bit.
    error_answer: Grammar,
}

impl Dictionary {
    /// The shipped dictionaries.
    ///
    /// # Panics
    ///
    /// Never for the shipped files: a unit test loads them.
    pub fn builtin() -> Dictionary {
        Dictionary::with_files(&[]).expect("the shipped dictionaries load")
    }

    /// The shipped dictionaries followed by extra files (name, XML text), whose definitions replace shipped
    /// ones with the same (code, vendor) or command.
    pub fn with_files(extra: &[(&str, &str)]) -> Result<Dictionary, DictError> {
        let mut dict = Dictionary::default();
        for (file, text) in BUILTIN_FILES.iter().chain(extra) {
            dict.load_xml(file, text)?;
        }
        Ok(dict)
    }

    /// Loads one XML file and resolves every grammar rule against all AVPs loaded so far.
    pub fn load_xml(&mut self, file: &str, text: &str) -> Result<(), DictError> {
        xml::load(self, file, text)?;
        self.resolve();
        Ok(())
    }

    fn resolve(&mut self) {
        self.error_answer = Grammar {
            rules: validate::ERROR_ANSWER
                .iter()
                .map(|&(name, min, max)| Rule { name: name.to_string(), avp: None, min, max })
                .collect(),
        };
        let by_name = &self.by_name;
        let fix = |g: &mut Grammar| {
            for r in &mut g.rules {
                r.avp = by_name.get(&r.name).copied();
            }
        };
        for def in &mut self.avps {
            if let Some(g) = &mut def.grammar {
                fix(g);
            }
        }
        for cmd in self.commands.values_mut() {
            fix(&mut cmd.request);
            fix(&mut cmd.answer);
        }
        fix(&mut self.error_answer);
    }

    pub(crate) fn insert_avp(&mut self, def: AvpDef) {
        let k = key(def.code, def.vendor);
        if let Some(&old) = self.by_code.get(&k) {
            let prev = &self.avps[old];
            self.overrides.push((def.name.clone(), prev.file.clone(), def.file.clone()));
            if prev.name != def.name {
                self.by_name.remove(&prev.name);
            }
            self.by_name.insert(def.name.clone(), old);
            self.avps[old] = def;
        } else {
            if let Some(&other) = self.by_name.get(&def.name) {
                let prev = &self.avps[other];
                self.overrides.push((def.name.clone(), prev.file.clone(), def.file.clone()));
            }
            self.by_name.insert(def.name.clone(), self.avps.len());
            self.by_code.insert(k, self.avps.len());
            self.avps.push(def);
        }
    }

    pub(crate) fn insert_command(&mut self, app: u32, def: CommandDef) {
        if let Some(prev) = self.commands.insert(key(def.code, app), def.clone()) {
            self.overrides.push((format!("command {}", def.name), prev.file, def.file));
        }
    }

    pub(crate) fn insert_application(&mut self, def: ApplicationDef) {
        let entry =
            self.applications.entry(def.id).or_insert_with(|| ApplicationDef { vendors: Vec::new(), ..def.clone() });
        for v in def.vendors {
            if !entry.vendors.contains(&v) {
                entry.vendors.push(v);
            }
        }
    }

    /// The definition of AVP (code, vendor), vendor 0 for none.
    pub fn avp_def(&self, code: u32, vendor: u32) -> Option<&AvpDef> {
        self.by_code.get(&key(code, vendor)).map(|&i| &self.avps[i])
    }

    /// The definition of the AVP called `name`.
    pub fn avp_by_name(&self, name: &str) -> Option<&AvpDef> {
        self.by_name.get(name).map(|&i| &self.avps[i])
    }

    /// Every AVP definition.
    pub fn avps(&self) -> &[AvpDef] {
        &self.avps
    }

    /// The command for this application, falling back to the common application 0 (base commands such as RAR
    /// and ASR are used by every application with its own Application-Id in the header).
    pub fn command(&self, app: AppId, code: CommandCode) -> Option<&CommandDef> {
        self.commands.get(&key(code.0, app.0)).or_else(|| self.commands.get(&key(code.0, 0)))
    }

    /// Every command, keyed by (application, code).
    pub fn commands(&self) -> impl Iterator<Item = (AppId, &CommandDef)> {
        self.commands.iter().map(|(k, c)| (AppId((k >> 32) as u32), c))
    }

    /// The application with this id.
    pub fn application(&self, id: AppId) -> Option<&ApplicationDef> {
        self.applications.get(&id.0)
    }

    /// Every application.
    pub fn applications(&self) -> impl Iterator<Item = &ApplicationDef> {
        self.applications.values()
    }

    /// Definitions that a later file replaced: (name, replaced file, replacing file).
    pub fn overrides(&self) -> &[(String, String, String)] {
        &self.overrides
    }

    /// The first AVP called `name` in `avps`.
    pub fn find<'m>(&self, avps: &'m [Avp], name: &str) -> Option<&'m Avp> {
        let def = self.avp_by_name(name)?;
        avps.iter().find(|a| a.is(def.code, def.vendor))
    }

    /// Builds the AVP called `name` from a value checked against its format, with the flags its rules require.
    /// Integers convert when they fit; an Enumerated AVP also takes the name of a value.
    pub fn avp<'a>(&self, name: &str, value: impl Into<AvpValue<'a>>) -> Result<Avp, DictError> {
        let def = self.avp_by_name(name).ok_or_else(|| DictError::UnknownAvp(name.to_string()))?;
        let mismatch = |why: String| DictError::TypeMismatch { name: name.to_string(), data_type: def.data_type, why };
        let value = value.into();
        let int = |lo: i128, hi: i128| match &value {
            AvpValue::Int(v) if (lo..=hi).contains(v) => Ok(*v),
            AvpValue::Int(v) => Err(mismatch(format!("{v} is out of range"))),
            other => Err(mismatch(format!("got {other:?}"))),
        };
        use DataType::*;
        let data = match def.data_type {
            Unsigned32 => Bytes::copy_from_slice(&(int(0, u32::MAX.into())? as u32).to_be_bytes()),
            Unsigned64 => Bytes::copy_from_slice(&(int(0, u64::MAX.into())? as u64).to_be_bytes()),
            Integer32 => Bytes::copy_from_slice(&(int(i32::MIN.into(), i32::MAX.into())? as i32).to_be_bytes()),
            Integer64 => Bytes::copy_from_slice(&(int(i64::MIN.into(), i64::MAX.into())? as i64).to_be_bytes()),
            Enumerated => {
                let v = match &value {
                    AvpValue::Str(s) => def
                        .items
                        .iter()
                        .find(|i| i.name == *s)
                        .map(|i| i.code)
                        .ok_or_else(|| mismatch(format!("no value named {s:?}")))?,
                    _ => int(i32::MIN.into(), i32::MAX.into())? as i32,
                };
                Bytes::copy_from_slice(&v.to_be_bytes())
            }
            Float32 => match value {
                AvpValue::F32(v) => Bytes::copy_from_slice(&v.to_be_bytes()),
                other => return Err(mismatch(format!("got {other:?}"))),
            },
            Float64 => match value {
                AvpValue::F64(v) => Bytes::copy_from_slice(&v.to_be_bytes()),
                AvpValue::F32(v) => Bytes::copy_from_slice(&f64::from(v).to_be_bytes()),
                other => return Err(mismatch(format!("got {other:?}"))),
            },
            Time => match value {
                AvpValue::Time(t) => Bytes::copy_from_slice(&t.0.to_be_bytes()),
                other => return Err(mismatch(format!("got {other:?}"))),
            },
            Address => match value {
                AvpValue::Address(a) => Avp::address(0, &a).data().clone(),
                AvpValue::Str(s) => match s.parse::<std::net::IpAddr>() {
                    Ok(ip) => Avp::address(0, &ip.into()).data().clone(),
                    Err(_) => return Err(mismatch(format!("{s:?} is not an IP address"))),
                },
                other => return Err(mismatch(format!("got {other:?}"))),
            },
            Grouped => match value {
                AvpValue::Grouped(children) => Avp::grouped(0, &children).data().clone(),
                other => return Err(mismatch(format!("got {other:?}"))),
            },
            OctetString | UTF8String | DiameterIdentity | DiameterURI | IPFilterRule | QoSFilterRule => match value {
                AvpValue::Str(s) => Bytes::copy_from_slice(s.as_bytes()),
                AvpValue::Octets(b) if def.data_type == OctetString => b,
                other => return Err(mismatch(format!("got {other:?}"))),
            },
        };
        let avp = def.make(data);
        validate::check_value(def, &avp).map_err(|e| mismatch(e.to_string()))?;
        Ok(avp)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_loads_and_resolves_names() {
        let d = Dictionary::builtin();
        let sid = d.avp_by_name("Session-Id").unwrap();
        assert_eq!((sid.code, sid.vendor, sid.data_type), (263, 0, DataType::UTF8String));
        let mscc = d.avp_def(456, 0).unwrap();
        assert_eq!(mscc.name, "Multiple-Services-Credit-Control");
        assert!(mscc.grammar.as_ref().unwrap().rules.iter().all(|r| r.avp.is_some()));
        assert_eq!(d.avp_by_name("CC-Request-Type").unwrap().item_name(2), Some("UPDATE_REQUEST"));
        assert!(d.command(AppId::CREDIT_CONTROL, CommandCode::CREDIT_CONTROL).is_some());
        // RAR for Ro uses the base grammar; Gx has its own.
        assert_eq!(d.command(AppId::CREDIT_CONTROL, CommandCode::RE_AUTH).unwrap().file, "base.xml");
        assert_eq!(d.command(AppId::GX, CommandCode::RE_AUTH).unwrap().file, "gx.xml");
        assert!(d.overrides().is_empty(), "{:?}", d.overrides());
    }

    #[test]
    fn avp_by_name_checks_the_format() {
        let d = Dictionary::builtin();
        assert_eq!(d.avp("Rating-Group", 10).unwrap(), Avp::u32(432, 10));
        assert_eq!(d.avp("CC-Request-Type", "TERMINATION_REQUEST").unwrap(), Avp::i32(416, 3));
        assert!(matches!(d.avp("Rating-Group", -1), Err(DictError::TypeMismatch { .. })));
        assert!(matches!(d.avp("Rating-Group", "ten"), Err(DictError::TypeMismatch { .. })));
        assert!(matches!(d.avp("Origin-Host", "not an identity"), Err(DictError::TypeMismatch { .. })));
        assert!(matches!(d.avp("No-Such-AVP", 1), Err(DictError::UnknownAvp(_))));
        let v = d.avp("Supported-Features", vec![d.avp("Vendor-Id", 10415).unwrap()]).unwrap();
        assert_eq!(v.vendor_id(), Some(VendorId::TGPP));
    }

    #[test]
    fn later_files_override_and_say_so() {
        let extra = r#"<diameter><application id="4" name="x"><avp name="Rating-Group-X" code="432" must="M"><data type="Unsigned64"/></avp></application></diameter>"#;
        let d = Dictionary::with_files(&[("site.xml", extra)]).unwrap();
        assert_eq!(d.avp_def(432, 0).unwrap().data_type, DataType::Unsigned64);
        assert!(d.avp_by_name("Rating-Group").is_none());
        assert_eq!(d.overrides().len(), 1);
    }
}
