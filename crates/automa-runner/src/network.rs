//! Networked runs: the address ranges of the egress policy and the user-mode network stack that gives each
//! networked run a network namespace of its own.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::RunnerError;

/// An address range such as `10.0.0.0/8` or `fd00::/8`; a bare address is that single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    address: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The range of `prefix` leading bits of `address`; refused when bits past the prefix are set, which is
    /// most often a typo in a deny list (`10.1.0.0/8`) rather than a wish.
    pub fn new(address: IpAddr, prefix: u8) -> Result<Cidr, RunnerError> {
        let bits = if address.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return Err(RunnerError::InvalidConfig(format!(
                "{address}/{prefix}: the prefix is longer than {bits} bits"
            )));
        }
        let cidr = Cidr { address, prefix };
        if cidr.network() != address {
            return Err(RunnerError::InvalidConfig(format!(
                "{address}/{prefix} has bits set past its prefix: the range is {}/{prefix}",
                cidr.network()
            )));
        }
        Ok(cidr)
    }

    /// A single address.
    pub fn host(address: IpAddr) -> Cidr {
        Cidr { address, prefix: if address.is_ipv4() { 32 } else { 128 } }
    }

    pub fn address(&self) -> IpAddr {
        self.address
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn network(&self) -> IpAddr {
        match self.address {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::from((u32::from(a) & mask).to_be_bytes())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::from((u128::from(a) & mask).to_be_bytes())
            }
        }
    }
}

impl FromStr for Cidr {
    type Err = RunnerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || RunnerError::InvalidConfig(format!("{s:?} is not an address range like 10.0.0.0/8 or fd00::/8"));
        let (address, prefix) = match s.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (s, None),
        };
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        match prefix {
            None => Ok(Cidr::host(address)),
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                Cidr::new(address, p.parse().map_err(|_| bad())?)
            }
            Some(_) => Err(bad()),
        }
    }
}

impl TryFrom<String> for Cidr {
    type Error = RunnerError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Cidr> for String {
    fn from(cidr: Cidr) -> String {
        cidr.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// The user-mode network stack found on this host.
#[derive(Debug, Clone)]
pub(crate) struct Slirp {
    pub program: PathBuf,
    /// As `slirp4netns --version` prints it, e.g. `1.2.0`.
    pub version: String,
}

/// Directories searched after `PATH`: a server started with a minimal environment still finds the packaged
/// binary.
const USUAL_DIRS: &[&str] = &["/usr/bin", "/usr/local/bin", "/bin", "/usr/sbin", "/sbin"];

/// Finds a working `slirp4netns`: the configured one, or the first on `PATH` and in the usual directories.
pub(crate) fn find_slirp4netns(configured: Option<&Path>) -> Result<Slirp, String> {
    let program = match configured {
        Some(path) => path.to_path_buf(),
        None => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .chain(USUAL_DIRS.iter().map(PathBuf::from))
                .filter(|dir| dir.is_absolute())
                .map(|dir| dir.join("slirp4netns"))
                .find(|candidate| candidate.is_file())
                .ok_or("slirp4netns is not installed (Debian: apt-get install slirp4netns)")?
        }
    };
    let out = Command::new(&program)
        .arg("--version")
        .env_clear()
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("{} does not start: {e}", program.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("slirp4netns version "))
        .filter(|_| out.status.success())
        .ok_or_else(|| format!("{} --version does not report a slirp4netns version", program.display()))?
        .trim()
        .to_owned();
    Ok(Slirp { program, version })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_print_in_both_families() {
        assert_eq!("10.0.0.0/8".parse::<Cidr>().expect("v4").to_string(), "10.0.0.0/8");
        assert_eq!(" 192.0.2.7 ".parse::<Cidr>().expect("host").to_string(), "192.0.2.7/32");
        assert_eq!("fd00::/8".parse::<Cidr>().expect("v6").to_string(), "fd00::/8");
        assert_eq!("0.0.0.0/0".parse::<Cidr>().expect("all").prefix(), 0);
        let json: Vec<Cidr> = serde_json::from_str(r#"["100.64.0.0/10"]"#).expect("json");
        assert_eq!(serde_json::to_string(&json).expect("json"), r#"["100.64.0.0/10"]"#);
    }

    #[test]
    fn bad_ranges_are_refused_with_the_reason() {
        let err = |s: &str| s.parse::<Cidr>().expect_err(s).to_string();
        assert_eq!(
            err("10.1.0.0/8"),
            "invalid sandbox configuration: 10.1.0.0/8 has bits set past its prefix: the range is 10.0.0.0/8"
        );
        assert_eq!(err("10.0.0.0/33"), "invalid sandbox configuration: 10.0.0.0/33: the prefix is longer than 32 bits");
        for bad in ["", "10.0.0.0/", "10.0.0.0/+8", "example.com", "10.0.0.0/8/8"] {
            assert!(err(bad).contains("is not an address range"), "{bad}: {}", err(bad));
        }
    }
}
