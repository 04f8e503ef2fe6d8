'use strict';
// The conversation page: one WebSocket to omni-run --serve (protocol in omni_onnx/web/protocol.py).
// window.omniStats holds the page's own counters (frames received, samples played, underruns, stops, timings),
// which the end-to-end test and the benchmark read.

const $ = (id) => document.getElementById(id);
const stats = window.omniStats = {
  connected: false, ready: null, deltas: 0, framesReceived: 0, played: 0, underruns: 0, buffered: 0, stops: 0,
  started: [], stoppedAt: [], captured: [], events: [], errors: [], closeCode: null,
};
let ws = null, hello = null, sampleRate = 24000;
let playCtx = null, playNode = null, capCtx = null, capNode = null;
let micOn = false, phone = false, recording = null, answerEl = null;

function add(cls, text) {
  const el = document.createElement('div');
  el.className = 'msg ' + cls;
  el.textContent = text;
  $('log').appendChild(el);
  $('log').scrollTop = $('log').scrollHeight;
  return el;
}

function setStatus(state, text) {
  $('dot').className = state;
  $('status').textContent = text;
}

function idle() {
  setStatus(phone ? 'listening' : '', phone ? 'listening…' : 'ready');
}

function connect() {
  const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
  ws = new WebSocket(scheme + location.host + '/ws' + location.search);
  ws.binaryType = 'arraybuffer';
  ws.onmessage = (e) => (typeof e.data === 'string' ? onMessage(JSON.parse(e.data)) : onAudio(e.data));
  ws.onclose = (e) => {
    stats.connected = false;
    stats.closeCode = e.code;
    if (e.code !== 1013) setStatus('error', 'disconnected (reload the page to start again)');
  };
}

function sendJson(msg) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
}

function sendTagged(tag, header, bytes) {
  const head = new TextEncoder().encode(JSON.stringify(header));
  const b = new Uint8Array(3 + head.length + bytes.byteLength);
  b[0] = tag; b[1] = head.length >> 8; b[2] = head.length & 255;
  b.set(head, 3);
  b.set(new Uint8Array(bytes), 3 + head.length);
  ws.send(b);
}

function fillVoices(names, current) {
  const sel = $('voice');
  sel.innerHTML = '';
  for (const name of [''].concat(names)) {
    const o = document.createElement('option');
    o.value = name;
    o.textContent = name || 'default voice';
    sel.appendChild(o);
  }
  sel.value = current || '';
}

function onMessage(m) {
  switch (m.type) {
    case 'ready':
      hello = m; sampleRate = m.sample_rate; stats.connected = true; stats.ready = performance.now();
      fillVoices(m.voices, m.voice);
      $('phone').disabled = $('talk').disabled = !m.live;
      idle();
      if (!m.live) add('note', 'this bundle has no speech input: text chat only');
      break;
    case 'busy':
      setStatus('error', 'busy');
      add('error', m.message);
      break;
    case 'event':
      stats.events.push([performance.now(), m.kind]);
      if (m.kind === 'speech_start') setStatus('listening', 'hearing you…');
      else if (m.kind === 'turn' || m.kind === 'speech_end') { answerEl = null; setStatus('thinking', 'thinking…'); }
      else if (m.kind === 'rejoin') { if (answerEl) answerEl.remove(); answerEl = null; setStatus('listening', 'hearing you…'); }
      else if (m.kind === 'first_audio') setStatus('speaking', 'speaking… (talk to interrupt)');
      else if (m.kind === 'interrupt' && answerEl) answerEl.classList.add('cut');
      else if (m.kind === 'answer_end') {
        if (answerEl && answerEl.classList.contains('cut')) answerEl.textContent = m.text;  // as far as it was heard
        answerEl = null;
        idle();
      }
      break;
    case 'heard':
      add('me', m.text || '(speech)');
      break;
    case 'delta':
      stats.deltas++;
      if (!answerEl) { answerEl = add('omni', ''); answerEl.raw = ''; }
      answerEl.raw += m.text;
      answerEl.textContent = answerEl.raw.trim().replace(/\n{3,}/g, '\n\n');  // runs of blank lines shown as one
      $('log').scrollTop = $('log').scrollHeight;
      break;
    case 'end':
      if (playNode) playNode.port.postMessage({ final: true });
      if (m.reason !== 'eos') add('note', m.reason === 'length' ? '[stopped: answer length limit]' : '[stopped: context full]');
      break;
    case 'stop':
      if (playNode) playNode.port.postMessage({ stop: true });
      break;
    case 'reset':
      $('log').innerHTML = '';
      answerEl = null;
      $('voice').value = m.voice || '';
      add('note', m.message);
      break;
    case 'attached':
      add('note', `image ${m.name} attached to the next question`);
      break;
    case 'voices':
      fillVoices(m.voices, $('voice').value);
      add('note', m.message);
      break;
    case 'error':
      stats.errors.push(m.message);
      add('error', m.message);
      break;
  }
}

function onAudio(buf) {
  const bytes = new Uint8Array(buf);
  if (bytes[0] !== 1 || !playNode) return;
  const pcm16 = new Int16Array(buf.slice(1));
  const pcm = new Float32Array(pcm16.length);
  for (let i = 0; i < pcm16.length; i++) pcm[i] = pcm16[i] / 32768;
  stats.framesReceived++;
  playNode.port.postMessage({ pcm }, [pcm.buffer]);
}

function onPlayback(e) {
  const m = e.data;
  if (m.type === 'played') {
    sendJson({ type: 'played', epoch: m.epoch, samples: m.samples });
    stats.played = m.total; stats.buffered = m.buffered; stats.underruns = m.underruns;
  } else if (m.type === 'started') {
    stats.started.push(performance.now());
  } else if (m.type === 'stopped') {
    stats.stops++;
    stats.stoppedAt.push(performance.now());
  }
}

function onCapture(e) {
  const { pcm, captured, level } = e.data;
  stats.captured.push([performance.now(), captured, level]);
  if (stats.captured.length > 4000) stats.captured.splice(0, 1000);
  if (recording) recording.push(new Int16Array(pcm));
  if (micOn) {
    const b = new Uint8Array(1 + pcm.byteLength);
    b[0] = 1;
    b.set(new Uint8Array(pcm), 1);
    ws.send(b);
  }
}

async function startAudio() {
  if (playCtx) return;
  playCtx = new AudioContext({ sampleRate, latencyHint: 'interactive' });
  await playCtx.audioWorklet.addModule('/static/worklets.js');
  playNode = new AudioWorkletNode(playCtx, 'playback', { numberOfInputs: 0, outputChannelCount: [1] });
  playNode.port.onmessage = onPlayback;
  playNode.connect(playCtx.destination);
  await playCtx.resume();
}

async function startMic() {
  await startAudio();
  if (capCtx) return true;
  let stream;
  try {
    // The browser's echo canceller, noise suppression and gain control: the server runs no echo guard of its own.
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
  } catch (err) {
    add('error', `no microphone: ${err.message} (allow the microphone for this page; it needs http://127.0.0.1 or https)`);
    return false;
  }
  capCtx = new AudioContext({ sampleRate: 16000 });  // the VAD's and speech encoder's rate: the browser resamples
  await capCtx.audioWorklet.addModule('/static/worklets.js');
  capNode = new AudioWorkletNode(capCtx, 'capture');
  capNode.port.onmessage = onCapture;
  const mute = capCtx.createGain();
  mute.gain.value = 0;
  capCtx.createMediaStreamSource(stream).connect(capNode).connect(mute).connect(capCtx.destination);
  await capCtx.resume();
  return true;
}

function setMic(on) {
  if (micOn === on) return;
  micOn = on;
  sendJson({ type: 'mic', on });
}

$('phone').onclick = async () => {
  if (!(await startMic())) return;
  phone = !phone;
  $('phone').classList.toggle('on', phone);
  setMic(phone);
  idle();
};

const talkDown = async (e) => {
  e.preventDefault();
  if (!(await startMic())) return;
  setMic(true);
  setStatus('listening', 'listening while you hold…');
};
const talkUp = () => { if (!phone && micOn) { setMic(false); idle(); } };
$('talk').addEventListener('pointerdown', talkDown);
for (const ev of ['pointerup', 'pointerleave', 'pointercancel']) $('talk').addEventListener(ev, talkUp);

$('ask').onsubmit = async (e) => {
  e.preventDefault();
  const text = $('text').value.trim();
  if (!text) return;
  await startAudio();
  $('text').value = '';
  if (text === '/reset') { sendJson({ type: 'reset' }); return; }
  add('me', text);
  sendJson({ type: 'text', text });
};

$('stop').onclick = () => sendJson({ type: 'stop' });
$('voice').onchange = () => sendJson({ type: 'voice', name: $('voice').value || null });

function tooBig(file, limit, what) {
  if (file.size <= limit) return false;
  add('error', `${what} ${file.name} is ${(file.size / 1048576).toFixed(1)} MB; the limit is ${limit / 1048576} MB`);
  return true;
}

$('image').onchange = async () => {
  const f = $('image').files[0];
  $('image').value = '';
  if (!f || tooBig(f, hello.limits.image_bytes, 'image')) return;
  sendTagged(2, { name: f.name }, await f.arrayBuffer());
};

$('clip').onchange = async () => {
  const f = $('clip').files[0];
  $('clip').value = '';
  if (!f || tooBig(f, hello.limits.clip_bytes, 'recording')) return;
  add('note', 'cloning the voice…');
  sendTagged(3, { name: f.name, voice: $('clone-name').value }, await f.arrayBuffer());
};

function wav16k(chunks) {
  const n = chunks.reduce((a, c) => a + c.length, 0);
  const b = new DataView(new ArrayBuffer(44 + 2 * n));
  const str = (o, s) => { for (let i = 0; i < s.length; i++) b.setUint8(o + i, s.charCodeAt(i)); };
  str(0, 'RIFF'); b.setUint32(4, 36 + 2 * n, true); str(8, 'WAVE'); str(12, 'fmt ');
  b.setUint32(16, 16, true); b.setUint16(20, 1, true); b.setUint16(22, 1, true); b.setUint32(24, 16000, true);
  b.setUint32(28, 32000, true); b.setUint16(32, 2, true); b.setUint16(34, 16, true); str(36, 'data');
  b.setUint32(40, 2 * n, true);
  let o = 44;
  for (const c of chunks) for (const s of c) { b.setInt16(o, s, true); o += 2; }
  return b.buffer;
}

$('record').onclick = async () => {
  if (recording || !(await startMic())) return;
  recording = [];
  $('record').textContent = 'recording… read now';
  setTimeout(() => {
    const clip = wav16k(recording);
    recording = null;
    $('record').textContent = 'Record 6 s';
    add('note', 'cloning the voice…');
    sendTagged(3, { name: 'recording.wav', voice: $('clone-name').value }, clip);
  }, 6000);
};

setInterval(() => {
  $('stats').textContent = `played ${(stats.played / sampleRate).toFixed(1)} s · buffer ` +
    `${Math.round(1000 * stats.buffered / sampleRate)} ms · underruns ${stats.underruns}`;
}, 250);

connect();
