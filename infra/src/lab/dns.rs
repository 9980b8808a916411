//! The lab's answer to outbound name lookups: a DNS server on the bridge address that says
//! NXDOMAIN to every query, at once.
//!
//! Tasks resolve names through Docker's embedded DNS, which forwards names it does not
//! know (anything but services and tasks) to the node daemon's upstream. Node namespaces
//! have no route out of the lab (see `net::ensure_node`), and the machine's resolver
//! never answered from them: every outbound lookup of a site (WordPress's update checks
//! to api.wordpress.org on each wp-admin page) waited 10 s, and a dashboard load took
//! about 20 s. Each node's dockerd gets `--dns` [`super::HOST_IP`], so such a lookup now
//! fails in about a millisecond and WordPress carries on. Nothing in the lab needs an
//! outside name: the data tier is addressed by IP and the sites' own domains are in
//! their tasks' /etc/hosts.
use anyhow::{Context, Result};
use std::net::UdpSocket;

/// DNS port on [`super::HOST_IP`].
pub const PORT: u16 = 53;

/// The answer to one query: the same id and question, QR set, RD copied, RA set,
/// RCODE 3 (NXDOMAIN), no records. `None` for a packet that is not a query.
pub fn nxdomain(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    // The question section (one question: name labels, type, class), copied verbatim.
    let mut end = 12;
    if qdcount >= 1 {
        loop {
            let len = usize::from(*query.get(end)?);
            if len == 0 {
                end += 1;
                break;
            }
            if len & 0xc0 != 0 {
                return None; // no compression in a question we are asked
            }
            end += 1 + len;
        }
        end += 4;
        if end > query.len() {
            return None;
        }
    }
    let mut out = Vec::with_capacity(end);
    out.extend_from_slice(&query[..2]);
    // QR=1, opcode copied, AA=0, TC=0, RD copied; RA=1, RCODE=3.
    out.push(0x80 | (query[2] & 0x79));
    out.push(0x80 | 3);
    out.extend_from_slice(&[0, u8::from(qdcount >= 1), 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&query[12..end]);
    Some(out)
}

/// Starts the server (lab process `dns`, this very program) unless it answers.
pub fn ensure(lab: &super::Lab) -> Result<()> {
    let addr = format!("{}:{PORT}", super::HOST_IP);
    if let Some(pid) = lab.procs.alive("dns")
        && super::proc::runs_current_exe(pid)
        && answers(&addr)
    {
        return Ok(());
    }
    lab.procs.stop("dns", std::time::Duration::from_secs(2))?;
    let exe = std::env::current_exe().context("locating pressdock-infra")?;
    lab.procs.spawn(
        "dns",
        super::data::DATA_CG,
        "lab-dns",
        &lab.path("logs/dns.log"),
        &exe.to_string_lossy(),
        &["lab-dns".into(), "--listen".into(), addr.clone()],
    )?;
    super::sh::wait_for(
        &format!(
            "the lab's DNS on {addr} (log: {}/logs/dns.log)",
            super::STATE
        ),
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(100),
        || answers(&addr).then_some(()),
    )
}

/// Serves until killed (run by `lab up` as the lab process `dns`).
pub fn serve(addr: &str) -> Result<()> {
    let sock = UdpSocket::bind(addr).with_context(|| format!("binding {addr}/udp"))?;
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        if let Some(answer) = nxdomain(&buf[..n]) {
            let _ = sock.send_to(&answer, from);
        }
    }
}

/// Whether the server answers (a query for `pressdock-lab.invalid` gets NXDOMAIN).
pub fn answers(addr: &str) -> bool {
    let Ok(sock) = UdpSocket::bind("0.0.0.0:0") else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(std::time::Duration::from_millis(500)));
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["pressdock-lab", "invalid"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    if sock.send_to(&q, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(sock.recv(&mut buf), Ok(n) if n >= 12 && buf[..2] == [0x12, 0x34] && buf[3] & 0x0f == 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_nxdomain_with_the_question() {
        // id 0xabcd, RD, one question: api.wordpress.org A IN
        let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in ["api", "wordpress", "org"] {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let a = nxdomain(&q).expect("an answer");
        assert_eq!(&a[..2], &[0xab, 0xcd]);
        assert_eq!(a[2], 0x81, "QR and RD");
        assert_eq!(a[3], 0x83, "RA, NXDOMAIN");
        assert_eq!(&a[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&a[12..], &q[12..]);
    }

    #[test]
    fn ignores_answers_and_garbage() {
        assert_eq!(nxdomain(&[0; 5]), None);
        let mut r = vec![0, 1, 0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(nxdomain(&r), None, "a response is not answered");
        r[2] = 0x01;
        r[5] = 1;
        r.extend_from_slice(&[3, b'a', b'b']); // truncated question
        assert_eq!(nxdomain(&r), None);
    }
}
