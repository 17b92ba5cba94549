"""A loopback SMTP server (aiosmtpd) for the mailer tests.

Prints {"port": N} once listening, then one JSON line per message received: envelope,
headers, the plain-text part and the attachments as the server parsed them.
With the argument `auth`, the server requires AUTH as flare/pw; with
`starttls CERT KEY`, it requires STARTTLS with that certificate.
"""

import asyncio
import email
import json
import ssl
import sys
from email import policy

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Recorder:
    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.original_content, policy=policy.default)
        text = None
        attachments = []
        for part in message.walk():
            if part.is_multipart():
                continue
            filename = part.get_filename()
            if filename:
                attachments.append({
                    "filename": filename,
                    "content_type": part.get_content_type(),
                    "payload": part.get_payload(decode=True).decode("utf-8"),
                })
            elif part.get_content_type() == "text/plain" and text is None:
                text = part.get_content()
        login = getattr(session.auth_data, "login", None)
        print(json.dumps({
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": message["from"],
            "to": message["to"],
            "cc": message["cc"],
            "bcc": message["bcc"],
            "subject": message["subject"],
            "text": text,
            "attachments": attachments,
            "login": login.decode() if isinstance(login, bytes) else None,
        }), flush=True)
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == b"flare"
        and auth_data.password == b"pw"
    )
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


async def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else None
    tls_context = None
    if mode == "starttls":
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(sys.argv[2], sys.argv[3])

    def factory():
        if tls_context is not None:
            return SMTP(Recorder(), tls_context=tls_context, require_starttls=True)
        if mode == "auth":
            return SMTP(
                Recorder(),
                authenticator=authenticator,
                auth_required=True,
                auth_require_tls=False,
            )
        return SMTP(Recorder())

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await server.serve_forever()


asyncio.run(main())
