//! A stand-in for Amazon Redshift's `COPY … FROM 's3://…' … MANIFEST` in front of PostgreSQL, for benchmarks
//! on one machine (`scripts/bench-fleet.sh`): PostgreSQL cannot `COPY` from S3, so this front forwards every
//! message to PostgreSQL and carries out the `COPY` statements itself, reading the manifest and files from
//! an S3 endpoint (the code is `tests/common/copy_front.rs`, which the black-box tests use too).
//!
//!   cargo run --release --example redshift_copy_front -- POSTGRES_HOST:PORT S3_ENDPOINT_URL [LISTEN]
//!
//! Prints the address it listens on (default `127.0.0.1:0`, any free port), then serves until killed. S3
//! credentials come from the environment (`AWS_ACCESS_KEY_ID`, …); region `us-east-1` unless `AWS_REGION`.
#![allow(dead_code)]

#[path = "../../tests/common/copy_front.rs"]
mod copy_front;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(postgres), Some(endpoint)) = (args.first(), args.get(1)) else {
        eprintln!("usage: redshift_copy_front POSTGRES_HOST:PORT S3_ENDPOINT_URL [LISTEN]");
        std::process::exit(2);
    };
    let listen = args.get(2).map_or("127.0.0.1:0", String::as_str);
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(weir::aws::http_client())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new(region))
        .load()
        .await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    let front = copy_front::CopyFront::start_with(listen, postgres, s3).await;
    println!("{}", front.addr);
    std::future::pending::<()>().await;
}
