//! Certificates for the tests, made with the openssl CLI: a CA and certificates it signs.

use std::path::Path;
use std::process::Command;

use super::run_ok;

/// Runs openssl in `dir`.
pub fn openssl(dir: &Path, args: &[&str]) {
    run_ok(Command::new("openssl").current_dir(dir).args(args));
}

/// A CA (`NAME.crt`, `NAME.key`).
pub fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A certificate `NAME.crt` (key `NAME.key`) for common name `cn`, signed by `ca`.
pub fn make_cert(dir: &Path, ca: &str, name: &str, cn: &str, san: Option<&str>) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    let ext = dir.join(format!("{name}.ext"));
    let mut text = "basicConstraints=CA:FALSE\n".to_string();
    if let Some(san) = san {
        text.push_str(&format!("subjectAltName={san}\n"));
    }
    std::fs::write(&ext, text).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.crt"),
            "-extfile",
            ext.to_str().unwrap(),
        ],
    );
}
