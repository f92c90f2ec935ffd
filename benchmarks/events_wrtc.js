// DataChannel recipients on libwebrtc (@roamhq/wrtc) for benchmarks/bench_events.py.
//
//   NODE_PATH=.venv/node/node_modules node benchmarks/events_wrtc.js BASE LIVESTREAM_ID COUNT
//
// Joins COUNT viewers over WHEP, each with an `events` DataChannel in its offer (and a
// recvonly video transceiver, as a browser viewer has), then prints {"ready": true}.
// Commands on stdin, one a line: "start" (measure from now), "stop" (print the tally as
// one JSON line: deliveries, messages, send-order inversions, latencies and the loop's
// lags in seconds),
// "close". A chat message's text is its send time (seconds since the epoch, as Python's
// time.time() gives it); libwebrtc's SCTP acknowledges as browsers do (delayed SACK).
'use strict';
const {RTCPeerConnection} = require('@roamhq/wrtc');
const readline = require('readline');

const [base, livestreamId, countArg] = process.argv.slice(2);
const count = Number(countArg);
if (!base || !livestreamId || !(count > 0)) {
  console.error('usage: events_wrtc.js BASE LIVESTREAM_ID COUNT');
  process.exit(2);
}

const tally = {measuring: false, deliveries: 0, messages: 0, inversions: 0, latencies: [], lags: [], last: new Map()};

// How late this process's loop wakes from a 10 ms timer while measuring (its share of the latency).
let probeAt = Date.now();
setInterval(() => {
  const now = Date.now();
  if (tally.measuring) tally.lags.push(Math.max(0, now - probeAt - 10) / 1000);
  probeAt = now;
}, 10);

function feed(who, data) {
  if (!tally.measuring || typeof data !== 'string') return;
  const now = Date.now() / 1000;
  const value = JSON.parse(data);
  tally.messages += 1;
  for (const event of Array.isArray(value) ? value : [value]) {
    if (event.type !== 'chat:new') continue;
    const sent = Number(event.payload.message);
    tally.deliveries += 1;
    tally.latencies.push(now - sent);
    if (sent < (tally.last.get(who) || 0)) tally.inversions += 1;
    tally.last.set(who, sent);
  }
}

async function viewer(i) {
  const pc = new RTCPeerConnection({iceServers: []});
  pc.addTransceiver('video', {direction: 'recvonly'});
  const channel = pc.createDataChannel('events');
  const welcomed = new Promise((resolve) => {
    channel.onmessage = (e) => { resolve(); feed(i, e.data); };
  });
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') resolve(); };
    setTimeout(resolve, 3000);
  });
  const resp = await fetch(`${base}/api/v1/livestreams/${livestreamId}/watch`, {
    method: 'POST', headers: {'Content-Type': 'application/sdp'}, body: pc.localDescription.sdp,
  });
  if (resp.status !== 201) throw new Error(`watch: ${resp.status} ${await resp.text()}`);
  await pc.setRemoteDescription({type: 'answer', sdp: await resp.text()});
  await Promise.race([welcomed, new Promise((_, reject) => setTimeout(() => reject(new Error('no welcome in 60 s')), 60000))]);
  return pc;
}

async function main() {
  const pcs = [];
  let next = 0;
  const gate = async () => {  // 8 handshakes at a time, as the aiortc recipients
    while (next < count) pcs.push(await viewer(next++));
  };
  await Promise.all(Array.from({length: Math.min(8, count)}, gate));
  process.stdout.write(JSON.stringify({ready: true}) + '\n');
  for await (const line of readline.createInterface({input: process.stdin})) {
    const command = line.trim();
    if (command === 'start') {
      Object.assign(tally, {measuring: true, deliveries: 0, messages: 0, inversions: 0, latencies: [], lags: []});
      tally.last.clear();
    } else if (command === 'stop') {
      tally.measuring = false;
      process.stdout.write(JSON.stringify({
        deliveries: tally.deliveries, messages: tally.messages,
        sendOrderInversions: tally.inversions, latencies: tally.latencies, loopLags: tally.lags,
      }) + '\n');
    } else if (command === 'close') {
      break;
    }
  }
  for (const pc of pcs) pc.close();
  process.exit(0);
}

main().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
