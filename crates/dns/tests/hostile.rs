//! Clients that send garbage, stall or hoard connections: each costs only
//! itself, and the server goes on answering everyone else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{
    addresses, closed_within, exchange_tcp, exchange_udp, instance, namespace, query, read_tcp,
    receive_udp, unanswered_udp, Server, ANSWER_WAIT, SILENCE_WAIT,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use weft_dns::proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use weft_dns::proto::rr::{DNSClass, RecordType};
use weft_dns::{Limits, RoutingPolicy};

async fn still_answers(server: &Server) {
    let udp = server
        .ask_udp("backend.example.local.", RecordType::A)
        .await;
    assert_eq!(addresses(&udp.answers), ["10.0.0.1"]);
    let tcp = server
        .ask_tcp("backend.example.local.", RecordType::A)
        .await;
    assert_eq!(addresses(&tcp.answers), ["10.0.0.1"]);
}

async fn start() -> Server {
    Server::start(namespace(RoutingPolicy::Multivalue, &[instance(1)])).await
}

fn header(id: u16, flags: u16, questions: u16) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(12);
    for field in [id, flags, questions, 0, 0, 0] {
        bytes.extend_from_slice(&field.to_be_bytes());
    }
    bytes
}

#[tokio::test]
async fn random_datagrams_get_formerr_or_nothing_and_the_server_keeps_answering() {
    let server = start().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = StdRng::seed_from_u64(17);
    for _ in 0..300 {
        let len = rng.random_range(0..700);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Most with the query bit, so they get past the header.
        if let Some(flags) = bytes.get_mut(2) {
            if rng.random_bool(0.8) {
                *flags &= 0x7f;
            }
        }
        socket.send_to(&bytes, server.udp).await.unwrap();
    }
    let mut replies = 0;
    let mut formerr = 0;
    while let Some(reply) = receive_udp(&socket, SILENCE_WAIT).await {
        let message = Message::from_vec(&reply).expect("every reply is a DNS message");
        assert_eq!(message.metadata.message_type, MessageType::Response);
        replies += 1;
        if message.metadata.response_code == ResponseCode::FormErr {
            formerr += 1;
        }
        assert!(replies <= 300, "at most one reply per datagram");
    }
    assert!(
        formerr > 0,
        "malformed queries get FORMERR ({replies} replies)"
    );
    still_answers(&server).await;
}

#[tokio::test]
async fn a_truncated_header_is_dropped_and_a_header_missing_its_question_gets_formerr() {
    let server = start().await;
    // Shorter than a header: no id to answer to.
    assert!(unanswered_udp(server.udp, &[0xbe, 0xef, 0x01, 0x00, 0x00]).await);
    // A header announcing a question that is not there.
    let reply = exchange_udp(server.udp, &header(0xbeef, 0x0100, 1))
        .await
        .unwrap();
    let message = Message::from_vec(&reply).unwrap();
    assert_eq!(message.metadata.id, 0xbeef);
    assert_eq!(message.metadata.response_code, ResponseCode::FormErr);
    // Half a question.
    let mut half = query("backend.example.local.", RecordType::A)
        .to_vec()
        .unwrap();
    half.truncate(half.len() - 3);
    let reply = exchange_udp(server.udp, &half).await.unwrap();
    assert_eq!(
        Message::from_vec(&reply).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
    still_answers(&server).await;
}

#[tokio::test]
async fn responses_are_never_answered_so_two_servers_cannot_bounce_packets() {
    let server = start().await;
    let mut answer = query("backend.example.local.", RecordType::A);
    answer.metadata.message_type = MessageType::Response;
    assert!(unanswered_udp(server.udp, &answer.to_vec().unwrap()).await);
    assert!(unanswered_udp(server.udp, &header(7, 0x8000, 3)).await);
    still_answers(&server).await;
}

#[tokio::test]
async fn two_questions_other_opcodes_other_edns_versions_and_other_classes_get_errors_not_answers()
{
    let server = start().await;
    let mut two = query("backend.example.local.", RecordType::A);
    two.add_query(two.queries[0].clone());
    let reply = Message::from_vec(
        &exchange_udp(server.udp, &two.to_vec().unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);

    let mut notify = query("example.local.", RecordType::SOA);
    notify.metadata.op_code = OpCode::Notify;
    let reply = Message::from_vec(
        &exchange_udp(server.udp, &notify.to_vec().unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);

    let mut future_edns = query("backend.example.local.", RecordType::A);
    let mut edns = Edns::new();
    edns.set_version(1);
    future_edns.set_edns(edns);
    let reply = Message::from_vec(
        &exchange_udp(server.udp, &future_edns.to_vec().unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    // BADVERS is 16, a value it shares with BADSIG (RFC 6891 §9).
    assert_eq!(u16::from(reply.metadata.response_code), 16);
    assert!(reply.answers.is_empty());

    let mut chaos = query("version.bind.", RecordType::TXT);
    chaos.queries[0].set_query_class(DNSClass::CH);
    let reply = Message::from_vec(
        &exchange_udp(server.udp, &chaos.to_vec().unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    still_answers(&server).await;
}

#[tokio::test]
async fn a_tcp_client_sending_garbage_or_a_huge_length_prefix_costs_only_its_own_connection() {
    let server = start().await;
    // Announces 65,535 octets and sends 100: the server waits for the rest
    // on that connection alone.
    let mut stalled = TcpStream::connect(server.tcp).await.unwrap();
    let mut prefix = 0xffff_u16.to_be_bytes().to_vec();
    prefix.extend_from_slice(&[0x42; 100]);
    stalled.write_all(&prefix).await.unwrap();
    still_answers(&server).await;

    // Framed garbage gets FORMERR, and the connection goes on answering.
    let mut garbage = TcpStream::connect(server.tcp).await.unwrap();
    let mut bytes = header(0x1234, 0x0100, 5);
    bytes.extend_from_slice(&[0xff; 40]);
    let reply = exchange_tcp(&mut garbage, &bytes).await.unwrap();
    let message = Message::from_vec(&reply).unwrap();
    assert_eq!(message.metadata.id, 0x1234);
    assert_eq!(message.metadata.response_code, ResponseCode::FormErr);
    let good = query("backend.example.local.", RecordType::A)
        .to_vec()
        .unwrap();
    let reply = exchange_tcp(&mut garbage, &good).await.unwrap();
    assert_eq!(
        addresses(&Message::from_vec(&reply).unwrap().answers),
        ["10.0.0.1"]
    );

    // A message shorter than a header ends its connection.
    let mut tiny = TcpStream::connect(server.tcp).await.unwrap();
    tiny.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
    assert!(read_tcp(&mut tiny).await.is_none());

    // The stalled one is still waiting, and harms nobody.
    still_answers(&server).await;
    drop(stalled);
}

#[tokio::test]
async fn idle_tcp_connections_are_closed_and_connections_past_the_cap_are_refused() {
    let limits = Limits {
        max_tcp_connections: 2,
        tcp_idle_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let server =
        Server::start_with(namespace(RoutingPolicy::Multivalue, &[instance(1)]), limits).await;
    let good = query("backend.example.local.", RecordType::A)
        .to_vec()
        .unwrap();
    let mut first = TcpStream::connect(server.tcp).await.unwrap();
    let mut second = TcpStream::connect(server.tcp).await.unwrap();
    assert!(exchange_tcp(&mut first, &good).await.is_some());
    assert!(exchange_tcp(&mut second, &good).await.is_some());

    // A third is closed at once; UDP is not affected.
    let mut third = TcpStream::connect(server.tcp).await.unwrap();
    assert!(closed_within(&mut third, ANSWER_WAIT).await);
    let udp = server
        .ask_udp("backend.example.local.", RecordType::A)
        .await;
    assert_eq!(addresses(&udp.answers), ["10.0.0.1"]);

    // Idle ones are closed after the timeout, which makes room.
    assert!(closed_within(&mut first, ANSWER_WAIT).await);
    assert!(closed_within(&mut second, ANSWER_WAIT).await);
    let tcp = server
        .ask_tcp("backend.example.local.", RecordType::A)
        .await;
    assert_eq!(addresses(&tcp.answers), ["10.0.0.1"]);
}

#[tokio::test]
async fn a_burst_of_queries_without_reading_answers_leaves_the_server_answering() {
    let server = start().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let bytes = query("backend.example.local.", RecordType::A)
        .to_vec()
        .unwrap();
    for _ in 0..2_000 {
        socket.send_to(&bytes, server.udp).await.unwrap();
    }
    drop(socket);
    still_answers(&server).await;
}
