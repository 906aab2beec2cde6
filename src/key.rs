//! Listener keys: what a listener is known by across upgrades.
//!
//! A key is the network and the address *as asked for* (`tcp:127.0.0.1:0` stays
//! `tcp:127.0.0.1:0` even once the kernel picked a port), or an explicit name. It is written
//! `NETWORK:ADDRESS` in the hand-over environment.

use std::fmt;
use std::str::FromStr;

/// The kind of socket a [`ListenerKey`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Network {
    /// A listening TCP socket; the key's address is `HOST:PORT` as asked for.
    Tcp,
    /// A bound UDP socket; the key's address is `HOST:PORT` as asked for.
    Udp,
    /// A listening Unix domain stream socket; the key's address is its path.
    Unix,
    /// Any listening stream socket, identified by a name the application chose.
    Named,
}

impl Network {
    const ALL: [Network; 4] = [Network::Tcp, Network::Udp, Network::Unix, Network::Named];

    fn as_str(self) -> &'static str {
        match self {
            Network::Tcp => "tcp",
            Network::Udp => "udp",
            Network::Unix => "unix",
            Network::Named => "name",
        }
    }
}

/// Identifies a listener across upgrades: the network and the requested address, or a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ListenerKey {
    network: Network,
    address: String,
}

impl ListenerKey {
    /// A TCP listener on `HOST:PORT`, as asked for (port 0 included).
    pub fn tcp(address: impl Into<String>) -> Self {
        Self::new(Network::Tcp, address)
    }

    /// A UDP socket bound to `HOST:PORT`, as asked for (port 0 included).
    pub fn udp(address: impl Into<String>) -> Self {
        Self::new(Network::Udp, address)
    }

    /// A Unix domain stream socket at `path`.
    pub fn unix(path: impl Into<String>) -> Self {
        Self::new(Network::Unix, path)
    }

    /// A listener identified by a name only, whatever address it listens on.
    pub fn named(name: impl Into<String>) -> Self {
        Self::new(Network::Named, name)
    }

    fn new(network: Network, address: impl Into<String>) -> Self {
        ListenerKey {
            network,
            address: address.into(),
        }
    }

    /// The kind of socket.
    pub fn network(&self) -> Network {
        self.network
    }

    /// The address or name, as asked for.
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl fmt::Display for ListenerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.network.as_str(), self.address)
    }
}

/// The error returned when a string is not a `NETWORK:ADDRESS` key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a listener key: expected tcp:HOST:PORT, udp:HOST:PORT, unix:PATH or name:NAME"
)]
pub(crate) struct ParseKeyError(String);

impl FromStr for ListenerKey {
    type Err = ParseKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || ParseKeyError(s.to_string());
        let (network, address) = s.split_once(':').ok_or_else(error)?;
        let network = Network::ALL
            .into_iter()
            .find(|n| n.as_str() == network)
            .ok_or_else(error)?;
        if address.is_empty() {
            return Err(error());
        }
        Ok(ListenerKey::new(network, address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_display() {
        for text in [
            "tcp:[::1]:80",
            "udp:127.0.0.1:0",
            "udp:[::1]:53",
            "unix:/run/a:b.sock",
            "name:admin",
        ] {
            assert_eq!(text.parse::<ListenerKey>().unwrap().to_string(), text);
        }
        for bad in ["", "tcp", "tcp:", "udp:", "sctp:1.2.3.4:5", ":x"] {
            assert!(bad.parse::<ListenerKey>().is_err(), "{bad}");
        }
        assert_eq!(
            "udp:127.0.0.1:0".parse::<ListenerKey>().unwrap(),
            ListenerKey::udp("127.0.0.1:0")
        );
        assert_ne!(
            ListenerKey::udp("127.0.0.1:0"),
            ListenerKey::tcp("127.0.0.1:0")
        );
    }
}
