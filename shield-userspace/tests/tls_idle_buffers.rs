//! The vendored rustls's one change (third_party/README.md): a TLS
//! connection that has read everything the peer sent gives its record
//! buffer back when asked (`release_read_buffer`, which shield asks of a
//! connection quiet for a while), and takes it again for the next record.
//!
//! Measured with a counting allocator in this test binary alone: live
//! heap bytes per idle connection pair (a rustls server and a rustls
//! client on an in-memory pipe, one exchange done), then a second
//! exchange on every pair, with records larger than the buffer, so that
//! what was released is proven to come back.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use std::io::{Read as _, Write as _};

use rustls::{
    client::Resumption,
    pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
    ClientConfig, ClientConnection, ConnectionCommon, RootCertStore, ServerConfig,
    ServerConnection,
};
use shield_test_support::heap::{live, Counting};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    sync::Notify,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const PAIRS: usize = 64;
/// The in-memory pipe's room each way: small, since a pipe keeps the
/// room it grew to and that would be counted with the connections.
const PIPE: usize = 1024;
/// How long a read finds nothing before its connection counts as quiet.
const QUIET: Duration = Duration::from_millis(1);
/// Larger than the record buffer's 4 KiB and than a record (16 KiB).
const MESSAGE: usize = 100 * 1024;
/// What an idle pair may hold: 10.7 KiB here with the change (11.7 after
/// the second exchange), 18.6 KiB with rustls 0.23.46 as released (each
/// side kept 4 KiB of record buffer for life). Tight enough that the
/// release left out on one side alone goes over (14.7 KiB).
const IDLE_PAIR_BOUND: isize = 13 * 1024;

fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut server = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    // Tickets would be kept in the client's cache and counted with the
    // connections; this test is about a connection's own buffers.
    server.send_tls13_tickets = 0;
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut client = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.resumption = Resumption::disabled();
    (Arc::new(server), Arc::new(client))
}

/// One server connection: echoes what it reads until the client goes
/// away, through a small buffer of its own (kept in the task, and so
/// counted with the pair). After each whole message, once a read has found
/// nothing, it gives the record buffer back, as shield does with a quiet
/// connection, and reads again only once the client says it will send
/// (`more`): a read in flight takes the buffer again.
async fn serve(acceptor: TlsAcceptor, io: DuplexStream, more: Arc<Notify>) {
    let mut tls = acceptor.accept(io).await.unwrap();
    let mut chunk = [0; 512];
    let mut echoed = 0;
    loop {
        if echoed == MESSAGE {
            echoed = 0;
            let found = tokio::time::timeout(QUIET, tls.read(&mut chunk)).await;
            assert!(found.is_err(), "the client sent more than a message");
            tls.get_mut().1.release_read_buffer();
        }
        if echoed == 0 {
            more.notified().await;
        }
        match tls.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                tls.write_all(&chunk[..n]).await.unwrap();
                tls.flush().await.unwrap();
                echoed += n;
            }
        }
    }
}

/// One exchange on `client`: `MESSAGE` bytes there and back; then the
/// client, having found nothing more to read, gives its buffer back too.
async fn exchange(client: &mut Client, more: &Notify, byte: u8) {
    more.notify_one();
    let sent = vec![byte; MESSAGE];
    let (mut read, mut write) = tokio::io::split(&mut *client);
    let (_, got) = tokio::join!(
        async {
            write.write_all(&sent).await.unwrap();
            write.flush().await.unwrap();
        },
        async {
            let mut got = vec![0; MESSAGE];
            read.read_exact(&mut got).await.unwrap();
            got
        }
    );
    assert!(got == sent, "the echo differs from what was sent");
    let waited = tokio::time::timeout(QUIET, client.read(&mut [0; 1])).await;
    assert!(waited.is_err(), "the server sent more than the echo");
    client.get_mut().1.release_read_buffer();
}

type Client = tokio_rustls::client::TlsStream<DuplexStream>;

/// Lets every connection task run until it has nothing left to do.
async fn settle() {
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_idle_tls_connection_gives_its_record_buffer_back_and_takes_it_again() {
    let (server_config, client_config) = configs();
    let acceptor = TlsAcceptor::from(server_config.clone());
    let connector = TlsConnector::from(client_config.clone());
    settle().await;
    let before = live();
    let mut clients = Vec::with_capacity(PAIRS);
    for _ in 0..PAIRS {
        let (near, far) = tokio::io::duplex(PIPE);
        let more = Arc::new(Notify::new());
        tokio::spawn(serve(acceptor.clone(), far, more.clone()));
        let name = ServerName::try_from("localhost").unwrap();
        clients.push((connector.connect(name, near).await.unwrap(), more));
    }
    for (client, more) in &mut clients {
        exchange(client, more, b'a').await;
    }
    settle().await;
    let per_pair = (live() - before) / PAIRS as isize;
    println!("live heap per idle TLS connection pair (server and client): {per_pair} bytes");
    assert!(
        per_pair < IDLE_PAIR_BOUND,
        "an idle pair holds {per_pair} bytes; the record buffers were not given back"
    );

    // What was given back comes back when needed, on every connection.
    for (client, more) in &mut clients {
        exchange(client, more, b'b').await;
    }
    settle().await;
    let after = (live() - before) / PAIRS as isize;
    println!("after a second exchange on each: {after} bytes per pair");
    assert!(
        after < IDLE_PAIR_BOUND,
        "an idle pair holds {after} bytes after a second exchange"
    );

    // Run here, after the measurements, so that its allocations are not
    // counted with the pairs.
    a_release_with_part_of_a_record_held_keeps_it(server_config, client_config);
}

/// Moves what `from` has to send into `to` in two halves, asking `to` to
/// release its buffer between them: with half a record held, the release
/// must keep it. Returns the plaintext `to` received.
fn transfer<A, B>(from: &mut ConnectionCommon<A>, to: &mut ConnectionCommon<B>) -> Vec<u8> {
    let mut wire = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut wire).unwrap();
    }
    let mut received = Vec::new();
    let (first, second) = wire.split_at(wire.len() / 2);
    for half in [first, second] {
        let mut half = half;
        while !half.is_empty() {
            to.read_tls(&mut half).unwrap();
            let state = to.process_new_packets().unwrap();
            let mut plaintext = vec![0; state.plaintext_bytes_to_read()];
            to.reader().read_exact(&mut plaintext).unwrap();
            received.extend_from_slice(&plaintext);
            to.release_read_buffer();
        }
    }
    received
}

fn a_release_with_part_of_a_record_held_keeps_it(
    server_config: Arc<ServerConfig>,
    client_config: Arc<ClientConfig>,
) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = ClientConnection::new(client_config, name).unwrap();
    let mut server = ServerConnection::new(server_config).unwrap();
    // The handshake's flights split too, each message across two reads.
    while client.is_handshaking() || server.is_handshaking() {
        transfer(&mut client, &mut server);
        transfer(&mut server, &mut client);
    }
    // Two and a half records: a half always ends inside one. (rustls
    // buffers 64 KiB of plaintext to send at most.)
    let sent: Vec<u8> = (0..40 * 1024).map(|i| i as u8).collect();
    client.writer().write_all(&sent).unwrap();
    let got = transfer(&mut client, &mut server);
    assert!(got == sent, "records split by a release arrived altered");
}
