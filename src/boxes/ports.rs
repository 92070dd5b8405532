//! Published ports: what `-p` asks for ([`PortSpec`], read as Docker reads
//! it) and what a running box got ([`Binding`], shown by `ps` and `twinbox
//! port` as Docker shows it).
//!
//! One difference from Docker, on purpose: a host address left out is
//! **127.0.0.1**, not 0.0.0.0. A sandbox should not be reachable from the
//! network unasked; `-p 0.0.0.0:8080:80` asks.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A `-p` that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not one of the forms.
    #[error("-p {0:?}: expected [IP:][HOST_PORT:]BOX_PORT[/tcp|/udp]")]
    Form(String),
    /// A port that is not 1 to 65535 (0 for the host's: "any free one").
    #[error("-p {spec:?}: {what} port {port:?} is not 1 to 65535")]
    Port {
        /// The whole `-p`.
        spec: String,
        /// Host or box.
        what: &'static str,
        /// What was there.
        port: String,
    },
    /// Not an IP address.
    #[error("-p {spec:?}: {ip:?} is not an IP address")]
    Ip {
        /// The whole `-p`.
        spec: String,
        /// What was there.
        ip: String,
    },
    /// A protocol other than tcp and udp.
    #[error("-p {spec:?}: {proto:?}: only tcp and udp ports are published")]
    Proto {
        /// The whole `-p`.
        spec: String,
        /// What was asked.
        proto: String,
    },
    /// A range (`8000-8010:8000-8010`).
    #[error("-p {0:?}: port ranges are not supported; give each port its own -p")]
    Range(String),
    /// The same host address, port and protocol twice.
    #[error("-p: host port {0} is published twice")]
    Twice(String),
}

/// The protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One `-p`, as asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// The host address to listen on.
    pub host_ip: IpAddr,
    /// The host port; 0 is any free one, chosen when the box starts.
    pub host_port: u16,
    /// The port in the box.
    pub box_port: u16,
    /// Its protocol.
    pub proto: Proto,
}

/// One published port of a running box, as bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The host address it listens on.
    pub host_ip: IpAddr,
    /// The host port it got.
    pub host_port: u16,
    /// The port in the box.
    pub box_port: u16,
    /// Its protocol.
    pub proto: Proto,
}

fn host(ip: &IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        IpAddr::V4(v4) => format!("{v4}:{port}"),
    }
}

impl Binding {
    /// `ps`'s form: `127.0.0.1:8080->80/tcp`.
    pub fn ps(&self) -> String {
        format!(
            "{}->{}/{}",
            host(&self.host_ip, self.host_port),
            self.box_port,
            self.proto
        )
    }

    /// `twinbox port`'s form: `80/tcp -> 127.0.0.1:8080`.
    pub fn port_line(&self) -> String {
        format!(
            "{}/{} -> {}",
            self.box_port,
            self.proto,
            host(&self.host_ip, self.host_port)
        )
    }
}

fn port(spec: &str, what: &'static str, s: &str, zero_ok: bool) -> Result<u16, Error> {
    if s.contains('-') {
        return Err(Error::Range(spec.into()));
    }
    match s.parse::<u16>() {
        Ok(0) if zero_ok => Ok(0),
        Ok(p) if p > 0 => Ok(p),
        _ => Err(Error::Port {
            spec: spec.into(),
            what,
            port: s.into(),
        }),
    }
}

impl PortSpec {
    /// Reads one `-p`: `BOX_PORT`, `HOST_PORT:BOX_PORT`,
    /// `IP:HOST_PORT:BOX_PORT`, `IP::BOX_PORT` (any free host port on IP),
    /// each with an optional `/tcp` or `/udp`; IPv6 addresses in brackets
    /// (`[::1]:8080:80`).
    pub fn parse(spec: &str) -> Result<PortSpec, Error> {
        let (addr, proto) = match spec.rsplit_once('/') {
            Some((a, p)) => (a, p),
            None => (spec, "tcp"),
        };
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => {
                return Err(Error::Proto {
                    spec: spec.into(),
                    proto: proto.into(),
                })
            }
        };
        // The IP first, so that an IPv6 address's colons are not fields.
        let (ip, rest) = if let Some(after) = addr.strip_prefix('[') {
            let (ip, rest) = after.split_once("]:").ok_or(Error::Form(spec.into()))?;
            (Some(ip), rest)
        } else {
            match addr.matches(':').count() {
                0 | 1 => (None, addr),
                2 => {
                    let (ip, rest) = addr.split_once(':').ok_or(Error::Form(spec.into()))?;
                    (Some(ip), rest)
                }
                _ => return Err(Error::Form(spec.into())),
            }
        };
        let host_ip = match ip {
            None | Some("") => IpAddr::from([127, 0, 0, 1]),
            Some(ip) => ip.parse().map_err(|_| Error::Ip {
                spec: spec.into(),
                ip: ip.into(),
            })?,
        };
        let (host_port, box_port) = match rest.split_once(':') {
            None => (0, port(spec, "box", rest, false)?),
            Some((h, b)) => {
                let h = if h.is_empty() && ip.is_some() {
                    0
                } else {
                    port(spec, "host", h, false)?
                };
                (h, port(spec, "box", b, false)?)
            }
        };
        Ok(PortSpec {
            host_ip,
            host_port,
            box_port,
            proto,
        })
    }

    /// All of `-p`'s values; the same fixed host address and port twice
    /// for one protocol is an error here, before anything is bound (a TCP
    /// and a UDP port of the same number are two ports).
    pub fn parse_all(specs: &[String]) -> Result<Vec<PortSpec>, Error> {
        let out: Vec<PortSpec> = specs
            .iter()
            .map(|s| PortSpec::parse(s))
            .collect::<Result<_, _>>()?;
        for (i, a) in out.iter().enumerate() {
            if a.host_port != 0
                && out[..i].iter().any(|b| {
                    b.host_port == a.host_port && b.host_ip == a.host_ip && b.proto == a.proto
                })
            {
                return Err(Error::Twice(format!(
                    "{}/{}",
                    host(&a.host_ip, a.host_port),
                    a.proto
                )));
            }
        }
        Ok(out)
    }
}

/// `ps`'s PORTS column for these bindings.
pub fn ps_column(b: &[Binding]) -> String {
    b.iter().map(Binding::ps).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PortSpec {
        match PortSpec::parse(s) {
            Ok(p) => p,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn dockers_forms_are_read_with_loopback_as_the_default_address() {
        let lo: IpAddr = [127, 0, 0, 1].into();
        let all: IpAddr = [0, 0, 0, 0].into();
        let v6: IpAddr = "::1".parse().unwrap_or(lo);
        let spec = |host_ip, host_port, box_port| PortSpec {
            host_ip,
            host_port,
            box_port,
            proto: Proto::Tcp,
        };
        assert_eq!(p("8080:80"), spec(lo, 8080, 80));
        assert_eq!(p("80"), spec(lo, 0, 80));
        assert_eq!(p("80/tcp"), spec(lo, 0, 80));
        assert_eq!(p("8080:80/TCP"), spec(lo, 8080, 80));
        assert_eq!(p("0.0.0.0:8080:80"), spec(all, 8080, 80));
        assert_eq!(p("127.0.0.1::80"), spec(lo, 0, 80));
        assert_eq!(p("[::1]:8080:80"), spec(v6, 8080, 80));
        assert_eq!(p("[::1]::80/tcp"), spec(v6, 0, 80));
        let udp = |host_ip, host_port, box_port| PortSpec {
            proto: Proto::Udp,
            ..spec(host_ip, host_port, box_port)
        };
        assert_eq!(p("5353:53/udp"), udp(lo, 5353, 53));
        assert_eq!(p("53/UDP"), udp(lo, 0, 53));
        assert_eq!(p("127.0.0.1::53/udp"), udp(lo, 0, 53));
        assert_eq!(p("0.0.0.0:5353:53/udp"), udp(all, 5353, 53));
        assert_eq!(p("[::1]:5353:53/udp"), udp(v6, 5353, 53));
    }

    #[test]
    fn what_is_not_a_port_is_refused_with_its_reason() {
        for bad in ["", ":", "x", "8080:", ":80", "1:2:3:4", "[::1]80"] {
            assert!(PortSpec::parse(bad).is_err(), "{bad:?} was taken");
        }
        assert!(matches!(PortSpec::parse("0"), Err(Error::Port { .. })));
        assert!(matches!(
            PortSpec::parse("70000:80"),
            Err(Error::Port { what: "host", .. })
        ));
        assert!(matches!(
            PortSpec::parse("80:0"),
            Err(Error::Port { what: "box", .. })
        ));
        assert!(matches!(
            PortSpec::parse("localhost:80:80"),
            Err(Error::Ip { .. })
        ));
        assert!(matches!(
            PortSpec::parse("53:53/sctp"),
            Err(Error::Proto { .. })
        ));
        assert!(matches!(
            PortSpec::parse("53:53/"),
            Err(Error::Proto { .. })
        ));
        assert!(matches!(
            PortSpec::parse("8000-8001:80-81"),
            Err(Error::Range(_))
        ));
        let twice = PortSpec::parse_all(&["8080:80".into(), "127.0.0.1:8080:81".into()]);
        assert_eq!(twice, Err(Error::Twice("127.0.0.1:8080/tcp".into())));
        let twice = PortSpec::parse_all(&["53:53/udp".into(), "53:54/udp".into()]);
        assert_eq!(twice, Err(Error::Twice("127.0.0.1:53/udp".into())));
        // The same number as tcp and as udp is two ports, as in Docker.
        assert!(PortSpec::parse_all(&["53:53".into(), "53:53/udp".into()]).is_ok());
        // Any free port twice is two ports.
        assert!(PortSpec::parse_all(&["80".into(), "80".into()]).is_ok());
    }

    #[test]
    fn bindings_are_shown_as_docker_shows_them() {
        let b = Binding {
            host_ip: [127, 0, 0, 1].into(),
            host_port: 8080,
            box_port: 80,
            proto: Proto::Tcp,
        };
        assert_eq!(b.ps(), "127.0.0.1:8080->80/tcp");
        assert_eq!(b.port_line(), "80/tcp -> 127.0.0.1:8080");
        let v6 = Binding {
            host_ip: "::1".parse().unwrap_or(b.host_ip),
            ..b.clone()
        };
        let udp = Binding {
            host_port: 5353,
            box_port: 53,
            proto: Proto::Udp,
            ..b.clone()
        };
        assert_eq!(udp.ps(), "127.0.0.1:5353->53/udp");
        assert_eq!(udp.port_line(), "53/udp -> 127.0.0.1:5353");
        assert_eq!(
            ps_column(&[b, v6, udp]),
            "127.0.0.1:8080->80/tcp, [::1]:8080->80/tcp, 127.0.0.1:5353->53/udp"
        );
    }
}
