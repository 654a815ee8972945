//! `--addr-file`: the addresses a server bound, for whoever started it. A supervisor
//! that picks a free port and passes it races with every other process on the machine
//! (the port can be taken before the server binds it); one that passes port 0 and
//! reads this file cannot lose that race. `shardrank up` and the tests work this way,
//! as CockroachDB's `--listening-url-file` does.
//!
//! The format is one `key=HOST:PORT` line per listener, `grpc` first:
//! ```text
//! grpc=127.0.0.1:41234
//! admin=127.0.0.1:41235
//! ```

use std::net::SocketAddr;
use std::path::Path;

/// The addresses a server listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundAddrs {
    pub grpc: SocketAddr,
    /// None with `--admin-listen none`.
    pub admin: Option<SocketAddr>,
}

impl BoundAddrs {
    pub fn to_text(&self) -> String {
        let mut s = format!("grpc={}\n", self.grpc);
        if let Some(a) = self.admin {
            s.push_str(&format!("admin={a}\n"));
        }
        s
    }

    /// Parses [`BoundAddrs::to_text`]'s output; unknown keys are skipped, so that a
    /// newer server's file still reads.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (mut grpc, mut admin) = (None, None);
        for (n, line) in text.lines().enumerate() {
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!("line {}: {line:?} is not key=HOST:PORT", n + 1));
            };
            let addr = || {
                value
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("line {}: {value:?}: {e}", n + 1))
            };
            match key {
                "grpc" => grpc = Some(addr()?),
                "admin" => admin = Some(addr()?),
                _ => {}
            }
        }
        Ok(BoundAddrs {
            grpc: grpc.ok_or("no grpc= line")?,
            admin,
        })
    }

    /// Writes the file whole: a reader sees no file or all of it, never a part.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, self.to_text())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("--addr-file {}: {e}", path.display()))
    }

    /// The file at `path`: None while there is none yet.
    pub fn read(path: &Path) -> Result<Option<Self>, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

/// The address `listener` is bound to; with `path` (--addr-file), written there with
/// `admin`'s. What both servers do once both of their listeners are bound.
pub fn report(
    path: Option<&Path>,
    listener: &tokio::net::TcpListener,
    admin: Option<SocketAddr>,
) -> Result<SocketAddr, String> {
    let grpc = listener
        .local_addr()
        .map_err(|e| format!("the gRPC listener's address: {e}"))?;
    if let Some(path) = path {
        BoundAddrs { grpc, admin }.write(path)?;
    }
    Ok(grpc)
}

/// Checks a `--addr-file` path at start-up, before anything is bound or loaded: its
/// directory must exist (a coordinator only writes the file once its shards are up).
pub fn check(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if path.file_name().is_none() || !dir.is_dir() {
        return Err(format!(
            "--addr-file {}: not a file in an existing directory",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_addresses_read_back_and_bad_files_say_which_line() {
        let dir = std::env::temp_dir().join(format!("addr-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("shard-0.addr");
        assert_eq!(BoundAddrs::read(&path), Ok(None));
        for b in [
            BoundAddrs {
                grpc: "127.0.0.1:41234".parse().unwrap(),
                admin: Some("127.0.0.1:41235".parse().unwrap()),
            },
            BoundAddrs {
                grpc: "[::1]:7000".parse().unwrap(),
                admin: None,
            },
        ] {
            b.write(&path).unwrap();
            assert_eq!(BoundAddrs::read(&path), Ok(Some(b)));
        }
        // No temporary file is left beside it.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();

        assert_eq!(
            BoundAddrs::parse("grpc=127.0.0.1:1\nhttp=127.0.0.1:2\n")
                .unwrap()
                .admin,
            None
        );
        let err = BoundAddrs::parse("grpc=127.0.0.1:1\nadmin=localhost\n").unwrap_err();
        assert!(err.starts_with("line 2: \"localhost\""), "{err}");
        assert!(BoundAddrs::parse("grpc 127.0.0.1:1")
            .unwrap_err()
            .contains("line 1"));
        assert_eq!(BoundAddrs::parse("").unwrap_err(), "no grpc= line");
        let missing = Path::new("/nonexistent-dir/x.addr");
        assert!(check(missing)
            .unwrap_err()
            .contains("not a file in an existing directory"));
        assert!(check(Path::new("/")).is_err());
        assert_eq!(check(Path::new("x.addr")), Ok(()));
        assert_eq!(check(&std::env::temp_dir().join("x.addr")), Ok(()));
        assert!(BoundAddrs {
            grpc: "127.0.0.1:1".parse().unwrap(),
            admin: None
        }
        .write(missing)
        .unwrap_err()
        .starts_with("--addr-file /nonexistent-dir/x.addr: "));
    }
}
