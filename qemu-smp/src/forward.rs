//! Host ports that `run` forwards to the guest over QEMU user networking: the defaults, the
//! `--forward [tcp:|udp:]HOST:GUEST` option, and what happens when a host port is taken.
//!
//! A default port that is busy (8080 often is) is replaced by a free one, and the console says
//! which; a port the user named with `--forward` that is busy is an error naming it. Nothing is
//! left to QEMU's raw "Could not set up host forwarding rule".

use std::fmt;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};

/// Transport of a forwarded port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// QEMU's name (`tcp`, `udp`).
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One forwarding rule: host `127.0.0.1:host` → guest port `guest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    /// Transport.
    pub proto: Proto,
    /// Host port on 127.0.0.1.
    pub host: u16,
    /// Guest port.
    pub guest: u16,
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:127.0.0.1:{}→{}",
            self.proto.name(),
            self.host,
            self.guest
        )
    }
}

/// The default rules, with what each serves: HTTP, TCP and UDP echo, memcached.
pub const DEFAULTS: &[(Forward, &str)] = &[
    (
        Forward {
            proto: Proto::Tcp,
            host: 8080,
            guest: 80,
        },
        "HTTP",
    ),
    (
        Forward {
            proto: Proto::Tcp,
            host: 7007,
            guest: 7,
        },
        "TCP echo",
    ),
    (
        Forward {
            proto: Proto::Udp,
            host: 7007,
            guest: 7,
        },
        "UDP echo",
    ),
    (
        Forward {
            proto: Proto::Tcp,
            host: 11211,
            guest: 11211,
        },
        "memcached",
    ),
];

/// Parses `--forward` values: `[tcp:|udp:]HOST:GUEST` (TCP when no transport is named).
pub fn parse_forward(text: &str) -> Result<Forward, String> {
    let (proto, rest) = match text.split_once(':') {
        Some(("tcp", rest)) => (Proto::Tcp, rest),
        Some(("udp", rest)) => (Proto::Udp, rest),
        _ => (Proto::Tcp, text),
    };
    let (host, guest) = rest.split_once(':').ok_or_else(|| {
        format!("'{text}' is not [tcp:|udp:]HOST:GUEST (e.g. 18080:80 or udp:17007:7)")
    })?;
    let port = |value: &str, which: &str| -> Result<u16, String> {
        match value.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!(
                "'{text}': {which} port '{value}' is not a port number 1-65535"
            )),
            Ok(port) => Ok(port),
        }
    };
    Ok(Forward {
        proto,
        host: port(host, "host")?,
        guest: port(guest, "guest")?,
    })
}

/// Whether `127.0.0.1:port` can be bound now for `proto`.
pub fn host_port_free(proto: Proto, port: u16) -> bool {
    match proto {
        Proto::Tcp => TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok(),
        Proto::Udp => UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok(),
    }
}

/// A host port the kernel hands out as free for `proto` now.
pub fn any_free_port(proto: Proto) -> Option<u16> {
    match proto {
        Proto::Tcp => TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .ok()
            .map(|a| a.port()),
        Proto::Udp => UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|s| s.local_addr())
            .ok()
            .map(|a| a.port()),
    }
}

/// The rules `run` uses, and what it must tell the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The rules, with what each serves.
    pub rules: Vec<(Forward, String)>,
    /// One line per default port that was busy and replaced.
    pub notes: Vec<String>,
}

/// Combines the defaults with the user's `--forward` rules (a user rule replaces the default
/// for the same transport and guest port), and replaces busy default host ports by free ones.
/// `free(proto, port)` says whether a host port is free; `pick(proto)` finds a free one.
pub fn resolve(
    user: &[Forward],
    free: impl Fn(Proto, u16) -> bool,
    pick: impl Fn(Proto) -> Option<u16>,
) -> Result<Resolved, String> {
    let mut rules: Vec<(Forward, String)> = Vec::new();
    let mut notes = Vec::new();
    for rule in user {
        if rules
            .iter()
            .any(|(r, _)| r.proto == rule.proto && r.host == rule.host)
        {
            return Err(format!(
                "--forward {}:{}:{} names host port {} twice",
                rule.proto.name(),
                rule.host,
                rule.guest,
                rule.host
            ));
        }
        if !free(rule.proto, rule.host) {
            return Err(format!(
                "host port {} ({}) is in use on 127.0.0.1: choose another with --forward {}:PORT:{}",
                rule.host,
                rule.proto.name(),
                rule.proto.name(),
                rule.guest
            ));
        }
        rules.push((*rule, "--forward".into()));
    }
    // Replacement ports chosen so far, by default host port: the TCP and UDP echo rules share
    // a host port, and should keep sharing one when it is replaced.
    let mut replaced: Vec<(u16, u16)> = Vec::new();
    for (default, what) in DEFAULTS {
        if user
            .iter()
            .any(|r| r.proto == default.proto && r.guest == default.guest)
        {
            continue;
        }
        let taken_by_rule = |port: u16, rules: &[(Forward, String)]| {
            rules
                .iter()
                .any(|(r, _)| r.proto == default.proto && r.host == port)
        };
        let mut rule = *default;
        if let Some(&(_, port)) = replaced.iter().find(|(from, _)| *from == default.host) {
            if free(rule.proto, port) && !taken_by_rule(port, &rules) {
                rule.host = port;
            }
        }
        if !free(rule.proto, rule.host) || taken_by_rule(rule.host, &rules) {
            let original = rule.host;
            let port = (0..16)
                .filter_map(|_| pick(rule.proto))
                .find(|&p| !taken_by_rule(p, &rules))
                .ok_or_else(|| {
                    format!(
                        "host port {original} ({}) is in use and no free port was found: choose one with --forward {}:PORT:{}",
                        rule.proto.name(),
                        rule.proto.name(),
                        rule.guest
                    )
                })?;
            rule.host = port;
            replaced.push((original, port));
            notes.push(format!(
                "host port {original} ({}) is in use: forwarding 127.0.0.1:{port} to guest port {} ({what}) instead; choose your own with --forward {}:PORT:{}",
                rule.proto.name(),
                rule.guest,
                rule.proto.name(),
                rule.guest
            ));
        }
        rules.push((rule, (*what).to_string()));
    }
    Ok(Resolved { rules, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_values_parse() {
        assert_eq!(
            parse_forward("18080:80"),
            Ok(Forward {
                proto: Proto::Tcp,
                host: 18080,
                guest: 80
            })
        );
        assert_eq!(
            parse_forward("udp:17007:7"),
            Ok(Forward {
                proto: Proto::Udp,
                host: 17007,
                guest: 7
            })
        );
        assert!(parse_forward("8080").unwrap_err().contains("'8080'"));
        assert!(parse_forward("0:80").unwrap_err().contains("host port '0'"));
        assert!(parse_forward("sctp:1:2").is_err());
        assert!(parse_forward("1:70000").unwrap_err().contains("guest port"));
    }

    #[test]
    fn defaults_stay_when_free() {
        let resolved = resolve(&[], |_, _| true, |_| None).unwrap();
        assert_eq!(resolved.rules.len(), DEFAULTS.len());
        assert!(resolved.notes.is_empty());
        assert_eq!(resolved.rules[0].0.host, 8080);
    }

    #[test]
    fn a_busy_default_is_replaced_and_said() {
        let resolved = resolve(&[], |_, port| port != 8080, |_| Some(40000)).unwrap();
        assert_eq!(resolved.rules[0].0.host, 40000);
        assert_eq!(resolved.rules[0].0.guest, 80);
        assert_eq!(resolved.notes.len(), 1);
        assert!(resolved.notes[0].contains("8080"), "{:?}", resolved.notes);
        assert!(resolved.notes[0].contains("--forward tcp:PORT:80"));
    }

    #[test]
    fn echo_keeps_one_host_port_for_tcp_and_udp_when_replaced() {
        let resolved = resolve(&[], |_, port| port != 7007, |_| Some(41000)).unwrap();
        let echo: Vec<u16> = resolved
            .rules
            .iter()
            .filter(|(r, _)| r.guest == 7)
            .map(|(r, _)| r.host)
            .collect();
        assert_eq!(echo, vec![41000, 41000]);
    }

    #[test]
    fn user_rules_replace_defaults_and_a_busy_user_port_is_an_error() {
        let user = [parse_forward("18080:80").unwrap()];
        let resolved = resolve(&user, |_, _| true, |_| None).unwrap();
        assert!(resolved.rules.iter().any(|(r, _)| r.host == 18080));
        assert!(!resolved.rules.iter().any(|(r, _)| r.host == 8080));
        let error = resolve(&user, |_, port| port != 18080, |_| None).unwrap_err();
        assert!(error.contains("host port 18080"), "{error}");
        let twice = [
            parse_forward("9000:80").unwrap(),
            parse_forward("9000:7").unwrap(),
        ];
        assert!(resolve(&twice, |_, _| true, |_| None)
            .unwrap_err()
            .contains("twice"));
    }

    #[test]
    fn a_really_busy_port_is_seen() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(!host_port_free(Proto::Tcp, port));
        drop(listener);
        assert!(any_free_port(Proto::Udp).is_some());
    }
}
