//! What both adapters check before handing a model file to their runtime: that it is a GGUF
//! file, and the member name a path gives.

use std::io::Read;
use std::path::Path;

/// Why a file is not a usable GGUF file.
#[derive(Debug)]
pub enum GgufError {
    /// It cannot be opened or read.
    Unreadable(std::io::Error),
    /// It does not start with the GGUF magic (or is shorter than it).
    NotGguf,
}

/// Checks that `path` can be read and starts with the GGUF magic.
pub fn check(path: &Path) -> Result<(), GgufError> {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => GgufError::NotGguf,
            _ => GgufError::Unreadable(e),
        })?;
    match &magic == b"GGUF" {
        true => Ok(()),
        false => Err(GgufError::NotGguf),
    }
}

/// A member's name from its model file: the file name without its extension.
pub fn model_name(path: &Path) -> String {
    path.file_stem().map_or_else(
        || path.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_short_files_and_names() {
        let dir = std::env::temp_dir().join(format!("gac-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes, ok) in [
            ("a.gguf", &b"GGUF\x03rest"[..], true),
            ("b.gguf", b"GG", false),
            ("c.gguf", b"ggml....", false),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            assert_eq!(check(&path).is_ok(), ok, "{name}");
        }
        assert!(matches!(
            check(&dir.join("none.gguf")),
            Err(GgufError::Unreadable(_))
        ));
        assert_eq!(model_name(Path::new("m/SmolLM2.Q4_1.gguf")), "SmolLM2.Q4_1");
    }
}
