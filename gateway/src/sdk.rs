//! The client SDK's ES modules (`sdk/js/src/*.js`), built into the binary so that the dev web page
//! can `import` them from `/sdk/<file>` and run on the same client code as the apps, with no bundler
//! and no file served from disk. The list is fixed: a name not in it is not a file.

/// `(name, source)` of the module `sdk/js/src/<name>`.
macro_rules! sdk_file {
    ($name:literal) => {
        ($name, include_str!(concat!("../../sdk/js/src/", $name)))
    };
}

/// Each module by the name it is imported as; the modules import one another by these names.
const MODULES: &[(&str, &str)] = &[
    sdk_file!("index.js"),
    sdk_file!("client.js"),
    sdk_file!("order.js"),
    sdk_file!("outbox.js"),
    sdk_file!("auth.js"),
    sdk_file!("transport.js"),
    sdk_file!("storage.js"),
    sdk_file!("conv.js"),
    sdk_file!("pacer.js"),
    sdk_file!("emitter.js"),
    sdk_file!("wx.js"),
    sdk_file!("errors.js"),
];

/// The source of module `name`, if the SDK has one by that name.
pub fn module(name: &str) -> Option<&'static str> {
    MODULES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, src)| *src)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_module_of_the_sdk_is_served() {
        // A module added to the SDK but not to the list would 404 in the browser, and so would every
        // module importing it.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/js/src");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".js"))
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = super::MODULES.iter().map(|(n, _)| n.to_string()).collect();
        listed.sort();
        assert_eq!(listed, on_disk);
    }
}
