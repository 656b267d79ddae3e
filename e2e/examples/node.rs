//! Starts the e2e harness's control plane and real node, with the images
//! built here imported, and keeps them until Ctrl-C: a cluster to try the
//! chart on by hand.
//!
//! ```sh
//! cargo run -p pier-e2e --example node
//! # then, in another terminal, with the kubeconfig it prints:
//! helm install pier charts/pier --kubeconfig … --set image.repository=pier.local/pier \
//!   --set image.tag=dev --set image.pullPolicy=Never
//! ```

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let images = match std::env::args().nth(1) {
        Some(tarball) => tarball.into(),
        None => tokio::task::spawn_blocking(pier_e2e::image::build).await??,
    };
    let cluster = pier_e2e::Cluster::start(&images).await?;
    println!(
        "node ready; kubeconfig: {}",
        cluster.control_plane().kubeconfig_path().display()
    );
    tokio::signal::ctrl_c().await?;
    drop(cluster);
    Ok(())
}
