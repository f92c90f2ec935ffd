"""A GStreamer webrtcbin WHIP publisher or WHEP viewer, run by Debian's /usr/bin/python3.

Not a test module: tests/e2e/test_gstreamer.py runs it as a subprocess, because the
project's venv has no PyGObject. webrtcbin keeps its defaults where they matter to the
SFU: an ``actpass`` offer, an RSA DTLS certificate, and (``bundle-policy=max-bundle``)
every section after the first marked ``bundle-only`` with port 0.

    python3 gst_peer.py publish URL [--key KEY] [--profile baseline|main|high] [--seconds N]
    python3 gst_peer.py watch URL [--profile-level-id 42e01f|64001f] [--seconds N]

It prints one JSON line: the answer's status, the DTLS/ICE states seen and, for a
viewer, the decoded video frames and audio buffers.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import urllib.error
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice

PUBLISH = """
webrtcbin name=w bundle-policy=max-bundle
videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1
 ! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast bframes=0 key-int-max=30
 ! video/x-h264,profile={profile} ! rtph264pay config-interval=-1 aggregate-mode=zero-latency
 ! application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000 ! w.
audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! opusenc
 ! rtpopuspay ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! w.
"""

VIDEO_CAPS = ("application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000,"
              "packetization-mode=(string)1,profile-level-id=(string){profile_level_id}")
AUDIO_CAPS = "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000"


class Peer:
    """One webrtcbin that offers, POSTs its offer once gathered, and applies the answer."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = GLib.MainLoop()
        self.report: dict[str, object] = {"video_frames": 0, "audio_buffers": 0, "states": []}
        if args.mode == "publish":
            self.pipeline = Gst.parse_launch(PUBLISH.format(profile=args.profile))
            self.webrtc = self.pipeline.get_by_name("w")
        else:
            self.pipeline = Gst.Pipeline.new("viewer")
            self.webrtc = Gst.ElementFactory.make("webrtcbin", "w")
            self.webrtc.set_property("bundle-policy", "max-bundle")
            self.pipeline.add(self.webrtc)
            for caps in (VIDEO_CAPS.format(profile_level_id=args.profile_level_id), AUDIO_CAPS):
                self.webrtc.emit("add-transceiver", GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY,
                                 Gst.Caps.from_string(caps))
            self.webrtc.connect("pad-added", self.on_incoming)
        self.use_loopback_only()
        self.webrtc.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.webrtc.connect("notify::ice-gathering-state", self.on_gathering)
        self.webrtc.connect("notify::connection-state", self.on_state)
        self.offered = False

    def use_loopback_only(self) -> None:
        """Gather ICE candidates on 127.0.0.1 only (libnice leaves loopback out by default)."""
        # webrtcbin 1.22 hands out "ice-agent" without a reference of its own: keep the
        # Python wrappers alive as long as the element, or their release frees the agent.
        self.ice = self.webrtc.get_property("ice-agent")
        self.ice.set_property("ice-tcp", False)
        self.nice_agent = self.ice.get_property("agent")
        address = Nice.Address()
        address.set_from_string("127.0.0.1")
        self.nice_agent.add_local_address(address)

    def run(self) -> int:
        self.pipeline.set_state(Gst.State.PLAYING)
        if self.args.mode == "publish":
            for transceiver in self.transceivers():
                transceiver.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
        GLib.timeout_add_seconds(self.args.seconds, self.loop.quit)
        # The test stops a publisher with SIGTERM once it has seen enough: report anyway.
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, self.quit)
        self.loop.run()
        self.pipeline.set_state(Gst.State.NULL)
        print(json.dumps(self.report), flush=True)
        return 0 if self.report.get("status") == 201 else 1

    def quit(self) -> bool:
        self.loop.quit()
        return False

    def transceivers(self) -> list[GstWebRTC.WebRTCRTPTransceiver]:
        found = []
        index = 0
        while True:
            transceiver = self.webrtc.emit("get-transceiver", index)
            if transceiver is None:
                return found
            found.append(transceiver)
            index += 1

    def on_negotiation_needed(self, element: Gst.Element) -> None:
        promise = Gst.Promise.new_with_change_func(self.on_offer, None)
        element.emit("create-offer", None, promise)

    def on_offer(self, promise: Gst.Promise, _data: object) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        if offer is None:
            print(f"create-offer failed: {reply.to_string()}", file=sys.stderr)
            return
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())

    def on_gathering(self, element: Gst.Element, _pspec: object) -> None:
        state = element.get_property("ice-gathering-state")
        if state == GstWebRTC.WebRTCICEGatheringState.COMPLETE and not self.offered:
            self.offered = True
            GLib.idle_add(self.post_offer)

    def post_offer(self) -> bool:
        offer = self.webrtc.get_property("local-description").sdp.as_text()
        self.report["offer"] = offer
        headers = {"Content-Type": "application/sdp"}
        if self.args.key:
            headers["Authorization"] = f"Bearer {self.args.key}"
        request = urllib.request.Request(self.args.url, offer.encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                self.report["status"] = response.status
                answer_text = response.read().decode()
        except urllib.error.HTTPError as exc:
            self.report["status"] = exc.code
            self.report["error"] = exc.read().decode(errors="replace")
            self.loop.quit()
            return False
        self.report["answer"] = answer_text
        _, sdp = GstSdp.SDPMessage.new_from_text(answer_text)
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
        self.webrtc.emit("set-remote-description", answer, Gst.Promise.new())
        return False

    def on_state(self, element: Gst.Element, _pspec: object) -> None:
        state = element.get_property("connection-state")
        self.report["states"].append(state.value_nick)  # type: ignore[attr-defined]

    def on_incoming(self, _element: Gst.Element, pad: Gst.Pad) -> None:
        if pad.direction != Gst.PadDirection.SRC:
            return
        decode = Gst.ElementFactory.make("decodebin")
        decode.connect("pad-added", self.on_decoded)
        self.pipeline.add(decode)
        decode.sync_state_with_parent()
        pad.link(decode.get_static_pad("sink"))

    def on_decoded(self, _decodebin: Gst.Element, pad: Gst.Pad) -> None:
        caps = pad.get_current_caps() or pad.query_caps(None)
        kind = "video_frames" if caps.to_string().startswith("video") else "audio_buffers"
        sink = Gst.ElementFactory.make("fakesink")
        sink.set_property("signal-handoffs", True)
        sink.set_property("sync", False)
        sink.connect("handoff", lambda *_: self.count(kind))
        self.pipeline.add(sink)
        sink.sync_state_with_parent()
        pad.link(sink.get_static_pad("sink"))

    def count(self, kind: str) -> None:
        self.report[kind] = int(self.report[kind]) + 1  # type: ignore[call-overload]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("publish", "watch"))
    parser.add_argument("url")
    parser.add_argument("--key", default="")
    parser.add_argument("--profile", default="constrained-baseline",
                        choices=("constrained-baseline", "baseline", "main", "high"))
    parser.add_argument("--profile-level-id", default="42e01f",
                        help="the H.264 format a viewer offers (64001f: high)")
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args()
    Gst.init(None)
    missing = [name for name in ("webrtcbin", "nicesrc", "x264enc", "opusenc", "avdec_h264",
                                 "rtph264pay", "dtlssrtpenc")
               if Gst.ElementFactory.find(name) is None]
    if missing:
        print(json.dumps({"missing": missing}), flush=True)
        return 3
    return Peer(args).run()


if __name__ == "__main__":
    sys.exit(main())
