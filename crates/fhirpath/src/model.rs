//! The FHIR type information the evaluator needs, behind a small trait so the engine does not
//! depend on the shape of the model tables.

/// What the evaluator needs to know about one element of a type.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChildInfo {
    pub choice: bool,
    /// The type of a non-choice element: its backbone path for inline types.
    pub type_name: Option<&'static str>,
}

pub(crate) trait TypeModel: Sync {
    fn child(&self, parent: &str, name: &str) -> Option<ChildInfo>;
    /// The element type held by a JSON key of `parent` (`valueQuantity` → `Quantity`).
    fn json_key_type(&self, parent: &str, key: &str) -> Option<&'static str>;
    fn is_resource_type(&self, name: &str) -> bool;
    fn base_of(&self, type_name: &str) -> Option<&'static str>;
    fn is_primitive(&self, type_name: &str) -> bool;
    /// Whether `name` is a FHIR type name (primitive, complex, resource, abstract).
    fn is_type(&self, name: &str) -> bool;
    /// Whether the model lists the elements of `parent` (so an unknown child is an error).
    fn knows(&self, parent: &str) -> bool;
}

/// The R4 model of `flare-fhir`.
pub(crate) struct FhirModel;

impl TypeModel for FhirModel {
    fn child(&self, parent: &str, name: &str) -> Option<ChildInfo> {
        CHILD_CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            let slot = &mut cache[slot_of(parent, name)];
            if let Some((cached_parent, cached_name, info)) = slot
                && cached_parent == parent
                && cached_name == name
            {
                return *info;
            }
            let info = lookup_child(parent, name);
            *slot = Some((parent.to_string(), name.to_string(), info));
            info
        })
    }
    fn json_key_type(&self, parent: &str, key: &str) -> Option<&'static str> {
        flare_fhir::model::resolve_json_key(parent, key).map(|(_, t)| t)
    }
    fn is_resource_type(&self, name: &str) -> bool {
        flare_fhir::model::is_resource_type(name)
    }
    fn base_of(&self, type_name: &str) -> Option<&'static str> {
        flare_fhir::model::base_of(type_name)
    }
    fn is_primitive(&self, type_name: &str) -> bool {
        flare_fhir::model::is_primitive(type_name)
    }
    fn is_type(&self, name: &str) -> bool {
        flare_fhir::model::is_type(name)
    }
    fn knows(&self, parent: &str) -> bool {
        flare_fhir::model::elements(parent).is_some()
    }
}

/// Navigation asks the model for the same few (type, element) pairs over and over; a small
/// direct-mapped cache per thread avoids two SipHash lookups per step.
const CHILD_CACHE_SLOTS: usize = 512;

type ChildCacheSlot = Option<(String, String, Option<ChildInfo>)>;

thread_local! {
    static CHILD_CACHE: std::cell::RefCell<Vec<ChildCacheSlot>> =
        std::cell::RefCell::new(vec![None; CHILD_CACHE_SLOTS]);
}

/// FNV-1a over both names: cheap, and collisions only cost a model lookup.
fn slot_of(parent: &str, name: &str) -> usize {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in parent.bytes().chain([b'.']).chain(name.bytes()) {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    hash as usize % CHILD_CACHE_SLOTS
}

fn lookup_child(parent: &str, name: &str) -> Option<ChildInfo> {
    let info = flare_fhir::model::child(parent, name)?;
    let type_name = match &info.backbone {
        Some(path) => Some(path.as_str()),
        None if !info.choice => info.types.first().map(String::as_str),
        None => None,
    };
    Some(ChildInfo {
        choice: info.choice,
        type_name,
    })
}

pub(crate) fn model() -> &'static dyn TypeModel {
    &FhirModel
}

/// The FHIR type named by a choice suffix (`Quantity`, `DateTime` → `dateTime`).
pub(crate) fn type_from_suffix(suffix: &str) -> String {
    const PRIMITIVES: [&str; 20] = [
        "Boolean",
        "Integer",
        "Decimal",
        "String",
        "Uri",
        "Url",
        "Canonical",
        "Code",
        "Id",
        "Oid",
        "Uuid",
        "Markdown",
        "Base64Binary",
        "Date",
        "DateTime",
        "Instant",
        "Time",
        "PositiveInt",
        "UnsignedInt",
        "Integer64",
    ];
    if PRIMITIVES.contains(&suffix) {
        let mut chars = suffix.chars();
        match chars.next() {
            Some(first) => first.to_ascii_lowercase().to_string() + chars.as_str(),
            None => String::new(),
        }
    } else {
        suffix.to_string()
    }
}
