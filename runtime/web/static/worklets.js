// Audio worklets of the conversation page (no build step, no dependencies).
// capture: the microphone (already at 16 kHz: the capture AudioContext runs at that rate) in 512-sample int16 blocks,
//   one Silero VAD window each, posted with the running sample count and the block's RMS level.
// playback: a jitter buffer at the model's rate (24 kHz context). It starts with the first frame, counts what it
//   played (reported to the server, so the conversation knows what was heard), drops its queue on "stop" (barge-in)
//   and counts underruns: running dry mid-answer and then receiving more audio of the same answer.

class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Int16Array(512);
    this.fill = 0;
    this.captured = 0;
    this.energy = 0;
  }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (!ch) return true;
    for (let i = 0; i < ch.length; i++) {
      const s = Math.max(-1, Math.min(1, ch[i]));
      this.energy += s * s;
      this.block[this.fill++] = s < 0 ? s * 32768 : s * 32767;
      if (this.fill === this.block.length) {
        this.captured += this.block.length;
        const level = Math.sqrt(this.energy / this.block.length);
        this.port.postMessage({ pcm: this.block.buffer, captured: this.captured, level }, [this.block.buffer]);
        this.block = new Int16Array(512);
        this.fill = 0;
        this.energy = 0;
      }
    }
    return true;
  }
}

class Playback extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = [];      // Float32Array chunks
    this.offset = 0;      // read position in queue[0]
    this.buffered = 0;
    this.epoch = 0;
    this.played = 0;      // samples of this epoch played
    this.total = 0;       // samples played, all epochs
    this.underruns = 0;
    this.dry = false;     // ran out mid-answer
    this.final = true;    // the answer's last frame has arrived (dry is then expected)
    this.sinceReport = 0;
    this.idle = true;     // nothing playing: the next sample played starts a stretch of speech
    this.port.onmessage = (e) => {
      const m = e.data;
      if (m.pcm) {
        if (this.dry && !this.final) this.underruns++;
        this.dry = false;
        this.final = false;
        this.queue.push(m.pcm);
        this.buffered += m.pcm.length;
      } else if (m.stop) {
        this.queue = [];
        this.offset = 0;
        this.buffered = 0;
        this.idle = true;
        this.report();
        this.epoch++;
        this.played = 0;
        this.dry = false;
        this.final = true;
        this.port.postMessage({ type: 'stopped', epoch: this.epoch });
      } else if (m.final) {
        this.final = true;
      }
    };
  }
  report() {
    this.port.postMessage({ type: 'played', epoch: this.epoch, samples: this.played, total: this.total,
                            buffered: this.buffered, underruns: this.underruns });
    this.sinceReport = 0;
  }
  process(inputs, outputs) {
    const out = outputs[0][0];
    let i = 0;
    const had = this.buffered > 0;
    while (i < out.length && this.queue.length) {
      const head = this.queue[0];
      const n = Math.min(out.length - i, head.length - this.offset);
      out.set(head.subarray(this.offset, this.offset + n), i);
      i += n;
      this.offset += n;
      if (this.offset === head.length) { this.queue.shift(); this.offset = 0; }
    }
    out.fill(0, i);
    if (i > 0) {
      if (this.idle) this.port.postMessage({ type: 'started', epoch: this.epoch });
      this.idle = false;
      this.played += i;
      this.total += i;
      this.buffered -= i;
      this.sinceReport += i;
    }
    if (had && this.buffered === 0) {
      this.dry = true;
      this.idle = true;
      this.report();
    } else if (this.sinceReport >= sampleRate / 20) {
      this.report();
    }
    return true;
  }
}

registerProcessor('capture', Capture);
registerProcessor('playback', Playback);
