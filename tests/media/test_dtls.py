"""DTLS with peers that are not aiortc's twin: RSA certificates, either DTLS role.

GStreamer's webrtcbin, like many RTC stacks, has an RSA certificate. When such a peer
is the DTLS server, the SFU (client) must offer ECDHE-RSA suites; when it offers
``actpass``, the SFU answers ``passive`` and serves its own ECDSA certificate. A
handshake that fails anyway is logged with OpenSSL's reason.
"""

from __future__ import annotations

import logging

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCCertificate, SRTPProtectionProfile, generate_certificate
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL

from .peers import Viewer, accept, local_offer, new_pc, publish, running_sfu, wait_for

pytestmark = pytest.mark.timeout(60)


def rsa_certificate(ciphers: bytes) -> RTCCertificate:
    """Return an RSA certificate whose DTLS context offers ``ciphers`` (an OpenSSL list)."""

    class RsaCertificate(RTCCertificate):
        def _create_ssl_context(self, srtp_profiles: list[SRTPProtectionProfile]) -> SSL.Context:
            ctx = super()._create_ssl_context(srtp_profiles)
            ctx.set_cipher_list(ciphers)
            return ctx

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return RsaCertificate(key=key, cert=generate_certificate(key))  # type: ignore[arg-type]


# What RTC stacks with RSA certificates offer: suites for either kind of server key.
MIXED_SUITES = b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"


def rsa_viewer(ciphers: bytes = MIXED_SUITES) -> Viewer:
    pc = new_pc()
    pc._RTCPeerConnection__certificates = [rsa_certificate(ciphers)]  # type: ignore[attr-defined]
    viewer = Viewer(pc)
    pc.on("track", viewer.consume)
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    return viewer


def dtls_role(pc: RTCPeerConnection) -> str:
    return pc.getTransceivers()[0].receiver.transport._role


async def test_actpass_offer_is_answered_passive_and_the_sfu_serves_dtls() -> None:
    async with running_sfu() as sfu:
        publisher, _ = await publish(sfu, "r")
        viewer = rsa_viewer()
        try:
            offer = await local_offer(viewer.pc)
            assert "a=setup:actpass" in offer
            session = await sfu.watch("r", offer)
            assert "a=setup:passive" in session.answer_sdp
            assert "a=setup:active" not in session.answer_sdp
            await accept(viewer.pc, session.answer_sdp)
            await wait_for(lambda: len(viewer.video_frames) >= 5, timeout=20)
            assert dtls_role(viewer.pc) == "client"
        finally:
            await viewer.close()
            await publisher.close()


async def test_rsa_certificate_peer_as_dtls_server() -> None:
    """A peer that offers setup:passive with an RSA certificate (the SFU is the client)."""
    async with running_sfu() as sfu:
        publisher, _ = await publish(sfu, "r")
        viewer = rsa_viewer()
        try:
            offer = (await local_offer(viewer.pc)).replace("a=setup:actpass", "a=setup:passive")
            session = await sfu.watch("r", offer)
            assert "a=setup:active" in session.answer_sdp
            await accept(viewer.pc, session.answer_sdp)
            await wait_for(lambda: len(viewer.video_frames) >= 5, timeout=20)
            assert dtls_role(viewer.pc) == "server"
        finally:
            await viewer.close()
            await publisher.close()


async def test_failed_handshake_is_logged_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    # Static-RSA key exchange only: no suite the SFU offers, so the handshake must fail.
    async with running_sfu() as sfu:
        publisher, _ = await publish(sfu, "r")
        viewer = rsa_viewer(ciphers=b"AES128-GCM-SHA256")
        try:
            offer = (await local_offer(viewer.pc)).replace("a=setup:actpass", "a=setup:passive")
            with caplog.at_level(logging.WARNING, logger="media.sfu"):
                session = await sfu.watch("r", offer)
                await accept(viewer.pc, session.answer_sdp)
                await wait_for(lambda: session.closed, timeout=20)
            warnings = [r.getMessage() for r in caplog.records if r.name == "media.sfu"]
            assert any("connection failed (DTLS as client: " in w and "handshake_failure" in w
                       for w in warnings), warnings
        finally:
            await viewer.close()
            await publisher.close()
