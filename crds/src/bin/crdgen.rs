//! Writes the CRD manifests generated from the Rust types.
//!
//! `crdgen` prints every CRD as a YAML stream on stdout; `crdgen --out-dir DIR` writes one file
//! per CRD into DIR (what `make crds` does for `crds/manifests/`).

use std::{env, fs, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let out_dir = match args.as_slice() {
        [] => None,
        [flag, dir] if flag == "--out-dir" => Some(PathBuf::from(dir)),
        _ => {
            eprintln!("usage: crdgen [--out-dir DIR]");
            return ExitCode::from(2);
        }
    };
    for crd in hookline_crds::crds() {
        let yaml = match hookline_crds::to_yaml(&crd) {
            Ok(yaml) => yaml,
            Err(err) => {
                eprintln!(
                    "crdgen: cannot serialize {}: {err}",
                    hookline_crds::file_name(&crd)
                );
                return ExitCode::FAILURE;
            }
        };
        match &out_dir {
            None => print!("---\n{yaml}"),
            Some(dir) => {
                let path = dir.join(hookline_crds::file_name(&crd));
                if let Err(err) = fs::create_dir_all(dir).and_then(|()| fs::write(&path, yaml)) {
                    eprintln!("crdgen: cannot write {}: {err}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    ExitCode::SUCCESS
}
