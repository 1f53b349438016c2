//! The load benchmark's floor: the same stack as tokengate (tokio, hyper, rustls) answering
//! every POST with `allowed: true`, with no policy work at all.
//!
//! Usage: floor-server [--echo-uid] CERT KEY LISTEN_ADDR
//!
//! By default the answer is fixed bytes (its uid is the benchmark fixture's). With `--echo-uid`
//! it reads `request.uid` from the body (skipping the rest) and echoes it, as the API server
//! requires of any webhook: the least JSON work a correct answer takes.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const ANSWER: &[u8] = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","allowed":true}}"#;

#[derive(serde::Deserialize)]
struct Review<'a> {
    #[serde(borrow)]
    request: UidOnly<'a>,
}

#[derive(serde::Deserialize)]
struct UidOnly<'a> {
    uid: &'a str,
}

async fn answer(request: Request<Incoming>, echo_uid: bool) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the whole body, as any webhook must.
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let answer = if echo_uid {
        let uid = serde_json::from_slice::<Review>(&body).map(|r| r.request.uid).unwrap_or_default();
        let answer = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": uid, "allowed": true},
        });
        Bytes::from(serde_json::to_vec(&answer).expect("JSON values serialise"))
    } else {
        Bytes::from_static(ANSWER)
    };
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(answer))
        .expect("a static response is valid"))
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let echo_uid = args.first().is_some_and(|a| a == "--echo-uid");
    if echo_uid {
        args.remove(0);
    }
    let [cert, key, listen] = args.as_slice() else {
        eprintln!("usage: floor-server [--echo-uid] CERT KEY LISTEN_ADDR");
        std::process::exit(2);
    };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).expect("cert file").collect::<Result<_, _>>().expect("cert pem");
    let key = PrivateKeyDer::from_pem_file(key).expect("key pem");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen.as_str()).await.expect("bind");
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(tls), hyper::service::service_fn(move |r| answer(r, echo_uid)))
                    .await;
            });
        }
    });
}
