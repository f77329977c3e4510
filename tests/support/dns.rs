//! A DNS server on loopback UDP for the tests of DNS-fed backends: it answers A and AAAA
//! queries from a table the test changes while the proxy runs, so the proxy's real
//! resolver code asks a real server. hickory-proto reads and writes the messages.

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

/// What the server answers for a name.
#[derive(Debug, Clone)]
pub enum Answer {
    /// These addresses (A for the IPv4 ones, AAAA for the IPv6 ones).
    Addrs(Vec<IpAddr>),
    /// SERVFAIL.
    Fail,
    /// These addresses' A records, and SERVFAIL to AAAA queries.
    FailV6(Vec<IpAddr>),
}

/// The running server; stops when dropped.
pub struct DnsServer {
    pub addr: SocketAddr,
    table: Arc<Mutex<HashMap<String, Answer>>>,
    queries: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DnsServer {
    /// Listen on 127.0.0.1:0. A name not in the table gets NXDOMAIN.
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = socket.local_addr().unwrap();
        let table: Arc<Mutex<HashMap<String, Answer>>> = Arc::default();
        let queries: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (t, q) = (table.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let reply = answer(&query, &t.lock().unwrap(), &q);
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        DnsServer {
            addr,
            table,
            queries,
            task,
        }
    }

    /// Answer `name` (without the final dot) with `answer` from now on.
    pub fn set(&self, name: &str, answer: Answer) {
        self.table.lock().unwrap().insert(name.to_string(), answer);
    }

    /// Answer `name` with `addrs`.
    pub fn addrs(&self, name: &str, addrs: &[IpAddr]) {
        self.set(name, Answer::Addrs(addrs.to_vec()));
    }

    /// Forget `name`: NXDOMAIN from now on.
    pub fn remove(&self, name: &str) {
        self.table.lock().unwrap().remove(name);
    }

    /// Queries (of any type) received for `name` so far.
    pub fn queries(&self, name: &str) -> usize {
        self.queries.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

fn answer(
    query: &Message,
    table: &HashMap<String, Answer>,
    counts: &Mutex<HashMap<String, usize>>,
) -> Message {
    let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    for q in &query.queries {
        reply.add_query(q.clone());
        let name = q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        *counts.lock().unwrap().entry(name.clone()).or_default() += 1;
        match table.get(&name) {
            None => reply.metadata.response_code = ResponseCode::NXDomain,
            Some(Answer::Fail) => reply.metadata.response_code = ResponseCode::ServFail,
            Some(Answer::FailV6(_)) if q.query_type() == RecordType::AAAA => {
                reply.metadata.response_code = ResponseCode::ServFail
            }
            Some(Answer::Addrs(addrs) | Answer::FailV6(addrs)) => {
                for ip in addrs {
                    let rdata = match (ip, q.query_type()) {
                        (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                        (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                        _ => continue,
                    };
                    reply.add_answer(Record::from_rdata(q.name().clone(), 1, rdata));
                }
            }
        }
    }
    reply
}
