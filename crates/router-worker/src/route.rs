//! Which handler a request goes to, decided from its method and whole path segments.

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
    /// A known path with the wrong method; carries the allowed one.
    MethodNotAllowed(&'static str),
    /// No such route.
    NotFound,
}

/// Routes `method` + `path` (path without query).
pub fn route(method: &str, path: &str) -> Route {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (route, allowed) = match segments.as_slice() {
        ["health"] => (Route::Health, "GET"),
        ["sessions"] => (Route::ListSessions, "GET"),
        ["sessions", "register"] => (Route::RegisterSession, "POST"),
        ["sessions", "unregister"] => (Route::UnregisterSession, "POST"),
        ["notifications", "send"] => (Route::SendNotification, "POST"),
        ["webhook", "telegram", secret] => (Route::Webhook((*secret).to_owned()), "POST"),
        ["ws"] => (Route::MachineSocket, "GET"),
        ["outbox"] => (Route::Outbox, "GET"),
        _ => return Route::NotFound,
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
