//! `cipherpost-local-gateway`: API Gateway on this machine (see the library's docs and
//! localstack/README.md). Built with the `functions` feature it hosts the cipherpost function
//! crates in-process; without it, it serves no HTTP routes and accepts every WebSocket
//! connection (enough to exercise sockets and the `@connections` API).

use std::{error::Error, process::ExitCode};

use cipherpost_local_gateway::{serve, GatewayConfig};

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(config: GatewayConfig) -> Result<(), Box<dyn Error>> {
    #[cfg(feature = "functions")]
    let config = functions::wire(config).await?;
    #[cfg(not(feature = "functions"))]
    tracing::warn!(
        "built without the `functions` feature: no HTTP routes, every WebSocket connection accepted \
         (cargo run -p cipherpost-local-gateway --features functions)"
    );
    serve(config, shutdown_signal()).await?;
    Ok(())
}

fn main() -> ExitCode {
    init_tracing();
    let config = match GatewayConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cipherpost-local-gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    #[cfg(feature = "functions")]
    functions::default_ws_endpoint(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cipherpost-local-gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cipherpost-local-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "functions")]
mod functions {
    //! The routes of DESIGN.md ("Requests") wired to the function crates' handlers.

    use std::error::Error;

    use cipherpost_backend::Backend;
    use cipherpost_local_gateway::{http_handler, ws_handler, GatewayConfig, Route};
    use http::Method;

    /// The functions push through the management API, which is this gateway: unless the
    /// environment says otherwise, point them here. Runs before the runtime starts (no other
    /// thread reads the environment yet).
    pub(crate) fn default_ws_endpoint(config: &GatewayConfig) {
        if std::env::var_os("CIPHERPOST_WS_ENDPOINT").is_some() || config.listen.port() == 0 {
            return;
        }
        let mut addr = config.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        std::env::set_var("CIPHERPOST_WS_ENDPOINT", format!("http://{addr}"));
    }

    /// Adds every route and the WebSocket handlers, sharing one backend (one "cold start").
    pub(crate) async fn wire(mut config: GatewayConfig) -> Result<GatewayConfig, Box<dyn Error>> {
        let backend: &'static Backend = Box::leak(Box::new(Backend::from_env().await?));
        macro_rules! route {
            ($method:ident, $path:literal, $function:path) => {
                Route::new(
                    Method::$method,
                    $path,
                    http_handler(move |event| $function(backend, event)),
                )
            };
        }
        config.routes.extend([
            route!(PUT, "/v1/accounts/{user}", cipherpost_fn_register::handler),
            route!(
                POST,
                "/v1/accounts/{user}/devices",
                cipherpost_fn_register::handler
            ),
            route!(
                DELETE,
                "/v1/accounts/{user}/devices/{device}",
                cipherpost_fn_register::handler
            ),
            route!(PUT, "/v1/keys", cipherpost_fn_keys::handler),
            route!(GET, "/v1/keys/{user}", cipherpost_fn_keys::handler),
            route!(GET, "/v1/keys", cipherpost_fn_keys::handler),
            route!(PUT, "/v1/messages", cipherpost_fn_send::handler),
            route!(GET, "/v1/messages", cipherpost_fn_sync::handler),
            route!(POST, "/v1/messages/ack", cipherpost_fn_sync::handler),
            route!(POST, "/v1/groups", cipherpost_fn_groups::handler),
            route!(GET, "/v1/groups/{group}", cipherpost_fn_groups::handler),
            route!(
                POST,
                "/v1/groups/{group}/members",
                cipherpost_fn_groups::handler
            ),
            route!(
                DELETE,
                "/v1/groups/{group}/members/{user}",
                cipherpost_fn_groups::handler
            ),
            route!(
                PUT,
                "/v1/groups/{group}/admins/{user}",
                cipherpost_fn_groups::handler
            ),
            route!(
                DELETE,
                "/v1/groups/{group}/admins/{user}",
                cipherpost_fn_groups::handler
            ),
            route!(
                POST,
                "/v1/groups/{group}/leave",
                cipherpost_fn_groups::handler
            ),
            route!(POST, "/v1/attachments", cipherpost_fn_attachments::handler),
            route!(
                GET,
                "/v1/attachments/{id}",
                cipherpost_fn_attachments::handler
            ),
        ]);
        config.connect = ws_handler(move |event| cipherpost_fn_ws_connect::handler(backend, event));
        config.disconnect =
            ws_handler(move |event| cipherpost_fn_ws_disconnect::handler(backend, event));
        Ok(config)
    }
}
