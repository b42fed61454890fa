//! Node configuration: a TOML file, every key also a flag and a `POR_*` variable.

/// Which transport carries frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// TLS 1.3 over TCP.
    Tcp,
    /// QUIC.
    Quic,
}

/// Which chain a node uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainChoice {
    /// The embedded chain in this process, stored at this path.
    Embedded(std::path::PathBuf),
    /// An embedded chain served by `por chain serve` at this address.
    Served(String),
    /// NEAR over RPC.
    Near {
        /// RPC endpoint or network name.
        rpc: String,
        /// The por contract.
        contract: String,
        /// NEAR key file.
        key_file: std::path::PathBuf,
    },
}

/// Node configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig;
