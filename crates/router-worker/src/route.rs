//! Which handler a request goes to, decided from its method and whole path segments.

use ccr_protocol::wire::route;

/// A request's destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /health`.
    Health,
    /// `GET /sessions`.
    ListSessions,
    /// `POST /sessions/register`.
    RegisterSession,
    /// `POST /sessions/unregister`.
    UnregisterSession,
    /// `POST /notifications/send`.
    SendNotification,
    /// `POST /webhook/telegram/{secret}`.
    Webhook(String),
    /// `GET /ws?machineId=X` (WebSocket upgrade).
    MachineSocket,
    /// `GET /outbox`.
    Outbox,
    /// `POST /approvals`.
    OpenApproval,
    /// `POST /approvals/close`.
    CloseApprovals,
    /// `GET /files/{file_id}` (the id as given: the handler validates it).
    File(String),
    /// A known path with the wrong method; carries the allowed one.
    MethodNotAllowed(&'static str),
    /// No such route.
    NotFound,
}

/// Routes `method` + `path` (path without query). Empty segments (a trailing or doubled `/`)
/// are ignored, so only whole segments match.
pub fn route(method: &str, path: &str) -> Route {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let path = format!("/{}", segments.join("/"));
    let webhook_secret = path
        .strip_prefix(route::WEBHOOK_TELEGRAM)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|secret| !secret.contains('/'));
    let file_id = path
        .strip_prefix(route::FILES)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|id| !id.contains('/'));
    let (route, allowed) = match path.as_str() {
        route::HEALTH => (Route::Health, "GET"),
        route::SESSIONS => (Route::ListSessions, "GET"),
        route::SESSIONS_REGISTER => (Route::RegisterSession, "POST"),
        route::SESSIONS_UNREGISTER => (Route::UnregisterSession, "POST"),
        route::NOTIFICATIONS_SEND => (Route::SendNotification, "POST"),
        route::MACHINE_SOCKET => (Route::MachineSocket, "GET"),
        route::OUTBOX => (Route::Outbox, "GET"),
        route::APPROVALS => (Route::OpenApproval, "POST"),
        route::APPROVALS_CLOSE => (Route::CloseApprovals, "POST"),
        _ => match (webhook_secret, file_id) {
            (Some(secret), _) => (Route::Webhook(secret.to_owned()), "POST"),
            (None, Some(id)) => (Route::File(id.to_owned()), "GET"),
            (None, None) => return Route::NotFound,
        },
    };
    let head_ok = allowed == "GET" && method == "HEAD";
    if method == allowed || head_ok {
        route
    } else {
        Route::MethodNotAllowed(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_whole_segments() {
        assert_eq!(route("GET", "/health"), Route::Health);
        assert_eq!(route("GET", "/health/"), Route::Health);
        assert_eq!(route("GET", "/sessions"), Route::ListSessions);
        assert_eq!(route("GET", "/outbox"), Route::Outbox);
        assert_eq!(route("POST", "/approvals"), Route::OpenApproval);
        assert_eq!(route("POST", "/approvals/close"), Route::CloseApprovals);
        assert_eq!(route("POST", "/outbox"), Route::MethodNotAllowed("GET"));
        assert_eq!(route("POST", "/sessions/register"), Route::RegisterSession);
        assert_eq!(
            route("POST", "/sessions/unregister"),
            Route::UnregisterSession
        );
        assert_eq!(
            route("POST", "/notifications/send"),
            Route::SendNotification
        );
        assert_eq!(
            route("POST", "/webhook/telegram/s3cret"),
            Route::Webhook("s3cret".into())
        );
        assert_eq!(route("POST", "/webhook/telegram"), Route::NotFound);
        assert_eq!(route("POST", "/webhook/telegram/a/b"), Route::NotFound);
        assert_eq!(route("GET", "/ws"), Route::MachineSocket);
        assert_eq!(
            route("GET", "/files/AgAC_x-1"),
            Route::File("AgAC_x-1".into())
        );
        assert_eq!(route("GET", "/files/a/b"), Route::NotFound);
        assert_eq!(route("GET", "/files"), Route::NotFound);
        assert_eq!(route("POST", "/files/x"), Route::MethodNotAllowed("GET"));
        assert_eq!(route("GET", "/healthz"), Route::NotFound);
        assert_eq!(route("GET", "/x/health"), Route::NotFound);
        assert_eq!(route("GET", "/sessions/register/x"), Route::NotFound);
    }

    #[test]
    fn wrong_method_names_the_right_one() {
        assert_eq!(route("POST", "/health"), Route::MethodNotAllowed("GET"));
        assert_eq!(
            route("GET", "/sessions/register"),
            Route::MethodNotAllowed("POST")
        );
    }
}
