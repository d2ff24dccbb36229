#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use skiff_store::fuzz::TxnTarget;

/// One database for the whole run, as a member keeps one; under `SKIFF_FUZZ_DIR`
/// (`make fuzz` removes it afterwards).
static TARGET: OnceLock<TxnTarget> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = TARGET.get_or_init(|| {
        let dir = std::env::var_os("SKIFF_FUZZ_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join(format!("skiff-fuzz-store-{}", std::process::id())));
        TxnTarget::new(&dir)
    });
    target.run(data);
});
