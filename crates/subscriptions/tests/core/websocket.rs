//! Client frames of the four websocket dialects.

use flare_subscriptions::{
    ClientFrame, bound_frame, parse_client_frame, ping_frame, token_from_query,
};

#[test]
fn c1_9_35_the_four_dialects_are_recognised() {
    let cases = [
        (
            "bind 123",
            ClientFrame::Bind {
                subscription_id: "123".into(),
            },
        ),
        (
            "bind-with-token token-abc",
            ClientFrame::BindWithToken {
                token: "token-abc".into(),
            },
        ),
        (
            "bind-with-token: token-def",
            ClientFrame::BindWithToken {
                token: "token-def".into(),
            },
        ),
        (
            r#"{"type":"bind-with-token","payload":{"token":"t1"}}"#,
            ClientFrame::BindWithToken { token: "t1".into() },
        ),
        (
            r#"{"type":"unbind-from-token","payload":{"token":"t1"}}"#,
            ClientFrame::UnbindFromToken { token: "t1".into() },
        ),
        (r#"{"type":"ping"}"#, ClientFrame::Ping),
        ("bind", ClientFrame::Unknown("bind".into())),
        (
            "bind-with-token",
            ClientFrame::Unknown("bind-with-token".into()),
        ),
        ("bind a b", ClientFrame::Unknown("bind a b".into())),
        (
            r#"{"type":"bind-with-token"}"#,
            ClientFrame::Unknown(r#"{"type":"bind-with-token"}"#.into()),
        ),
        ("{not json", ClientFrame::Unknown("{not json".into())),
        ("hello", ClientFrame::Unknown("hello".into())),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_client_frame(text), expected, "{text}");
    }
    assert_eq!(
        token_from_query("?token=abc%2Fd&x=1").as_deref(),
        Some("abc/d")
    );
    assert_eq!(token_from_query("token="), None);
    assert_eq!(bound_frame("123"), "bound 123");
    assert_eq!(ping_frame("123"), "ping 123");
}
