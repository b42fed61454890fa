//! Tickets: what `por files add` prints and `por files get` takes, like a magnet link.
//!
//! `por:<kind>:<root hex>:<size>:<provider hex>[,<provider hex>...]`, where kind is
//! `blob` or `collection`.

use std::fmt;
use std::str::FromStr;

use por_protocol::NodeId;

use crate::blob::Root;
use crate::error::FilesError;

/// What a ticket names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One file.
    Blob,
    /// A directory: the root is its manifest.
    Collection,
}

/// A root, its size, what it is, and who provides it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// Blob or collection.
    pub kind: Kind,
    /// The root (of the manifest, for a collection).
    pub root: Root,
    /// The size of the root blob.
    pub size: u64,
    /// Nodes that serve it.
    pub providers: Vec<NodeId>,
}

/// The most providers a ticket may name.
pub const MAX_PROVIDERS: usize = 64;

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Blob => "blob",
            Kind::Collection => "collection",
        };
        let providers: Vec<String> = self
            .providers
            .iter()
            .map(|p| por_protocol::hex::encode(&p.0))
            .collect();
        write!(
            f,
            "por:{kind}:{}:{}:{}",
            self.root,
            self.size,
            providers.join(",")
        )
    }
}

impl FromStr for Ticket {
    type Err = FilesError;

    fn from_str(s: &str) -> Result<Ticket, FilesError> {
        let bad = |why: &str| {
            FilesError::BadTicket(format!(
                "{why} (expected por:<blob|collection>:<root>:<size>:<providers>)"
            ))
        };
        let parts: Vec<&str> = s.trim().split(':').collect();
        let [scheme, kind, root, size, providers] = parts.as_slice() else {
            return Err(bad("wrong number of fields"));
        };
        if *scheme != "por" {
            return Err(bad("not a por ticket"));
        }
        let kind = match *kind {
            "blob" => Kind::Blob,
            "collection" => Kind::Collection,
            _ => return Err(bad("unknown kind")),
        };
        let root = Root::parse(root).map_err(|_| bad("bad root"))?;
        let size = size.parse().map_err(|_| bad("bad size"))?;
        let providers = providers
            .split(',')
            .map(|p| por_protocol::hex::decode::<32>(p).map(NodeId))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("bad provider key"))?;
        if providers.is_empty() || providers.len() > MAX_PROVIDERS {
            return Err(bad("1 to 64 providers"));
        }
        Ok(Ticket {
            kind,
            root,
            size,
            providers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_and_garbage_is_refused() {
        let t = Ticket {
            kind: Kind::Collection,
            root: Root([0xab; 32]),
            size: 12345,
            providers: vec![NodeId([1; 32]), NodeId([2; 32])],
        };
        let s = t.to_string();
        assert!(s.starts_with("por:collection:abab"));
        assert_eq!(s.parse::<Ticket>().unwrap(), t);
        for bad in [
            "",
            "por:blob",
            "http:blob:00:1:00",
            &s.replace("collection", "tree"),
            &s.replace(":12345:", ":-1:"),
            &format!("por:blob:{}:1:", Root([1; 32])),
            &format!("por:blob:{}:1:zz", Root([1; 32])),
        ] {
            assert!(
                matches!(bad.parse::<Ticket>(), Err(FilesError::BadTicket(_))),
                "{bad}"
            );
        }
    }
}
