// Browser client of `etf serve`: microphone (or a file) in, the emotional talking face out.
//
// Flow: getUserMedia (or WebAudio decoding a file) -> RTCPeerConnection with a sendrecv
// audio transceiver and a recvonly video transceiver -> wait for ICE gathering to finish
// (the server takes no trickled candidates) -> POST /offer -> set the answer -> open the
// WebSocket control channel named in the answer (emotion, intensity, pushed stats).
//
// For tests, `window.etf` exposes the state: {state, lastError, framesDecoded(),
// sendControl(obj), serverStats, browserStats, session, emotion, confirmedEmotion, sent}.
"use strict";

(() => {
  const PROTOCOL_VERSION = 1;
  const EMOTIONS = ["neutral", "happy", "angry", "sad", "surprise", "fear", "disgust"];
  const INTENSITY_MIN_GAP_MS = 100; // at most ~10 intensity messages per second
  const ICE_GATHER_TIMEOUT_MS = 5000;
  const CONNECT_TIMEOUT_MS = 20000;
  const BROWSER_STATS_MS = 500;
  const DEFAULT_TRANSITION_MS = 250;

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $("status"),
    message: $("message"),
    messageText: $("message-text"),
    messageClose: $("message-close"),
    video: $("avatar"),
    stage: $("stage"),
    placeholder: $("placeholder"),
    placeholderText: $("placeholder-text"),
    start: $("start"),
    stop: $("stop"),
    hear: $("hear"),
    sessionInfo: $("session-info"),
    emotions: $("emotions"),
    intensity: $("intensity"),
    intensityValue: $("intensity-value"),
    transition: $("transition"),
    fileOptions: $("file-options"),
    file: $("file"),
    loop: $("loop"),
    replay: $("replay"),
    tokenCard: $("token-card"),
    token: $("token"),
    latencyBody: $("latency-body"),
    sayForm: $("say-form"),
    sayText: $("say-text"),
    say: $("say"),
    interrupt: $("interrupt"),
    sayStatus: $("say-status"),
  };
  /** Dropped + late frames above this share of recent frames turn the counter red. */
  const BAD_FRAME_SHARE = 0.02;

  /** An error whose message is meant for the user, with a stable code for tests. */
  class Failure extends Error {
    constructor(code, message) {
      super(message);
      this.code = code;
    }
  }

  /** Thrown when Stop (or a newer Start) made an in-flight start obsolete. */
  class Cancelled extends Error {}

  const st = {
    phase: "idle", // idle | starting | connecting | connected | failed | ended
    run: 0, // incremented by every Start/Stop; stale async work compares against it
    pc: null,
    ws: null,
    wsOpened: false,
    micStream: null,
    audioCtx: null,
    fileBuffer: null,
    fileDest: null,
    fileNode: null,
    remoteStream: null,
    session: null,
    health: null,
    emotion: "neutral",
    intensity: 1,
    emotionChosen: false, // the user picked an emotion: send it on connect
    intensityChosen: false,
    confirmedEmotion: null,
    confirmedIntensity: null,
    serverStats: null,
    browser: { framesDecoded: 0, fps: 0, width: 0, height: 0, packetsLost: 0, rttMs: null },
    lastError: null,
    sent: {}, // control messages sent, by type (tests check the intensity throttle)
    timers: { stats: null, connect: null, intensity: null },
    lastIntensitySent: -Infinity,
    prevVideoSample: null,
    prevServerSample: null, // {sent, bad} of the previous stats message
    said: 0,
  };

  // ----- messages and phase ----------------------------------------------------------

  function showMessage(kind, code, text) {
    ui.message.hidden = false;
    ui.message.dataset.kind = kind;
    ui.message.dataset.code = code;
    ui.messageText.textContent = text;
    if (kind === "error") st.lastError = { code, message: text };
    console.info(`[etf] ${kind} ${code}: ${text}`);
  }

  function clearMessage(code) {
    if (code && ui.message.dataset.code !== code) return;
    ui.message.hidden = true;
    ui.message.dataset.code = "";
    ui.messageText.textContent = "";
  }

  const PHASE_LABEL = {
    idle: "Not connected",
    starting: "Starting…",
    connecting: "Connecting…",
    connected: "Live",
    failed: "Error",
    ended: "Session ended",
  };

  function setPhase(phase) {
    st.phase = phase;
    ui.status.dataset.phase = phase;
    ui.status.textContent = PHASE_LABEL[phase] || phase;
    const busy = phase === "starting" || phase === "connecting" || phase === "connected";
    ui.start.disabled = busy;
    ui.stop.disabled = !busy;
    for (const input of document.querySelectorAll("input[name=source]")) input.disabled = busy;
    ui.file.disabled = busy;
    ui.token.disabled = busy;
    ui.replay.disabled = !(phase === "connected" && st.fileBuffer);
    if (!busy) {
      ui.placeholder.hidden = false;
      ui.placeholderText.textContent = phase === "idle"
        ? "Press Start and speak: the face speaks with your voice, in the emotion you pick."
        : "Not connected. Press Start to try again.";
    } else if (phase !== "connected") {
      ui.placeholder.hidden = false;
      ui.placeholderText.textContent = "Connecting to the avatar…";
    }
  }

  // ----- emotion, intensity, transition ------------------------------------------------

  function transitionMs() {
    const v = Number(ui.transition.value);
    if (!Number.isFinite(v) || ui.transition.value === "") return DEFAULT_TRANSITION_MS;
    return Math.min(10000, Math.max(0, Math.round(v)));
  }

  function renderEmotions() {
    renderSay();
    for (const b of ui.emotions.querySelectorAll("button[data-emotion]")) {
      const e = b.dataset.emotion;
      b.setAttribute("aria-pressed", String(e === st.emotion));
      // Selected here but not yet confirmed by the server.
      b.classList.toggle("pending", e === st.emotion && st.ws !== null && st.wsOpened &&
        st.confirmedEmotion !== null && st.confirmedEmotion !== st.emotion);
    }
  }

  function renderIntensity() {
    ui.intensity.value = String(st.intensity);
    ui.intensityValue.textContent = st.intensity.toFixed(2);
  }

  function chooseEmotion(emotion) {
    if (!EMOTIONS.includes(emotion)) return;
    st.emotion = emotion;
    st.emotionChosen = true;
    sendControl({
      type: "set_emotion", emotion, intensity: st.intensity, transition_ms: transitionMs(),
    });
    renderEmotions();
  }

  function sendIntensityNow() {
    st.lastIntensitySent = performance.now();
    sendControl({ type: "set_intensity", intensity: st.intensity, transition_ms: transitionMs() });
  }

  function onIntensityInput() {
    st.intensity = Math.min(1, Math.max(0, Number(ui.intensity.value) || 0));
    st.intensityChosen = true;
    ui.intensityValue.textContent = st.intensity.toFixed(2);
    if (!controlOpen()) return; // sent with the emotion on connect
    if (st.timers.intensity !== null) return; // the pending send will carry this value
    const wait = st.lastIntensitySent + INTENSITY_MIN_GAP_MS - performance.now();
    if (wait <= 0) {
      sendIntensityNow();
    } else {
      // Trailing send: the latest value goes out once the gap has passed.
      st.timers.intensity = setTimeout(() => {
        st.timers.intensity = null;
        if (controlOpen()) sendIntensityNow();
      }, wait);
    }
  }

  // ----- control channel ---------------------------------------------------------------

  function controlOpen() {
    return st.ws !== null && st.ws.readyState === WebSocket.OPEN;
  }

  /** Send one control message (`v` is added when missing); false when not connected. */
  function sendControl(obj) {
    if (!controlOpen()) return false;
    const msg = obj && typeof obj === "object" && !("v" in obj)
      ? { v: PROTOCOL_VERSION, ...obj } : obj;
    st.ws.send(typeof msg === "string" ? msg : JSON.stringify(msg));
    const type = (msg && msg.type) || "raw";
    st.sent[type] = (st.sent[type] || 0) + 1;
    return true;
  }

  function openControl(url, token, run) {
    const full = token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`
      : url;
    let ws;
    try {
      ws = new WebSocket(full);
    } catch (e) {
      showMessage("error", "control_unreachable",
        `Cannot open the control channel at ${url}: ${e.message}. ` +
        "The video works but emotion changes and stats will not.");
      return;
    }
    st.ws = ws;
    st.wsOpened = false;
    ws.onopen = () => {
      if (run !== st.run) return;
      st.wsOpened = true;
      if (st.emotionChosen || st.intensityChosen) {
        sendControl({
          type: "set_emotion", emotion: st.emotion, intensity: st.intensity,
          transition_ms: transitionMs(),
        });
      }
      clearMessage("control_unreachable");
    };
    ws.onmessage = (ev) => {
      if (run !== st.run) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        showMessage("error", "control_error", "The server sent a control message that is not " +
          "JSON.");
        return;
      }
      onControlMessage(msg, run);
    };
    ws.onclose = (ev) => {
      if (st.ws !== ws) return; // we closed it ourselves (Stop)
      st.ws = null;
      renderEmotions();
      if (run !== st.run || st.phase === "ended") return;
      const why = `close code ${ev.code}${ev.reason ? `: ${ev.reason}` : ""}`;
      if (!st.wsOpened) {
        showMessage("error", "control_unreachable",
          `Could not connect the control channel at ${url} (${why}). The video may still ` +
          "work, but emotion changes and stats will not. Check that the control port is " +
          "reachable from this browser.");
      } else {
        showMessage("error", "control_closed",
          `The control channel closed (${why}). Emotion changes and live stats stop ` +
          "until you press Stop and Start again.");
      }
    };
  }

  function onControlMessage(msg, run) {
    switch (msg.type) {
      case "hello":
        if (!st.emotionChosen && EMOTIONS.includes(msg.emotion)) st.emotion = msg.emotion;
        if (!st.intensityChosen && typeof msg.intensity === "number") {
          st.intensity = msg.intensity;
          renderIntensity();
        }
        st.confirmedEmotion = msg.emotion;
        if (typeof msg.intensity === "number") st.confirmedIntensity = msg.intensity;
        renderEmotions();
        break;
      case "ack":
        if (msg.emotion) st.confirmedEmotion = msg.emotion;
        if (typeof msg.intensity === "number") st.confirmedIntensity = msg.intensity;
        renderEmotions();
        break;
      case "stats":
        st.serverStats = msg.stats;
        renderServerStats(msg.stats);
        break;
      case "pong":
        break;
      case "said":
        ui.sayStatus.textContent = msg.queued
          ? `queued: ${fmt(msg.duration_ms / 1000, 1)} s of speech`
          : "interrupted before it was spoken";
        break;
      case "error":
        if (msg.code === "session_closed") {
          endSession(run, "session_closed", `The server ended this session: ${msg.message}`);
        } else if (msg.code === "tts_failed" || (msg.id && String(msg.id).startsWith("say"))) {
          ui.sayStatus.textContent = "";
          showMessage("error", "say_failed", `The server could not say that: ${msg.message}`);
        } else if (msg.code === "rate_limited") {
          showMessage("warn", "rate_limited", `The server is dropping control messages: ` +
            `${msg.message}`);
        } else {
          showMessage("error", "control_error",
            `The server rejected a control message (${msg.code}): ${msg.message}`);
        }
        break;
      default:
        break;
    }
  }

  // ----- stats ---------------------------------------------------------------------------

  const fmt = (x, digits = 1) => (typeof x === "number" && Number.isFinite(x)
    ? x.toFixed(digits) : "–");

  function setText(id, text) {
    const el = $(id);
    if (el.textContent !== text) el.textContent = text;
  }

  function renderServerStats(s) {
    const target = s.target_fps || (st.session && st.session.fps);
    setText("stat-fps", `${fmt(s.fps)} / ${fmt(target, 0)}`);
    $("stat-fps").classList.toggle("bad", target > 0 && s.fps < 0.9 * target);
    const below = s.below_rate;
    $("stat-fps").title = below && below.now
      ? `below 90% of its frame rate for ${fmt(below.for_s)} s (the server is overloaded)`
      : "";
    setText("stat-sent", String(s.frames_sent ?? "–"));
    setText("stat-dropped", `${s.frames_dropped ?? "–"} / ${s.frames_late ?? "–"}`);
    // Red only while frames are being lost or delayed now, not for a few at start-up.
    const sample = { sent: s.frames_sent || 0, bad: (s.frames_dropped || 0) + (s.frames_late || 0) };
    const prev = st.prevServerSample;
    st.prevServerSample = sample;
    const recentSent = prev ? sample.sent - prev.sent : 0;
    const recentBad = prev ? sample.bad - prev.bad : 0;
    $("stat-dropped").classList.toggle("bad",
      recentSent > 0 && recentBad > BAD_FRAME_SHARE * recentSent);
    const sq = s.speech_queue || {};
    setText("stat-speech-q", typeof sq.queued_ms === "number"
      ? `${fmt(sq.queued_ms / 1000, 1)} s` : "–");
    setText("stat-delay", `${fmt(s.pipeline_delay_ms, 0)} ms`);
    setText("stat-lookahead", `${fmt(s.lookahead_ms, 0)} ms`);
    setText("stat-speech", s.speech ? "speaking" : "silent");
    $("stat-speech").classList.toggle("on", Boolean(s.speech));
    setText("stat-emotion", `${s.emotion ?? "–"} ${fmt(s.intensity, 2)}`);
    const q = s.queues || {};
    setText("stat-audio-q", `${fmt(q.audio_ms, 0)} ms`);
    const vq = q.video_frames;
    setText("stat-video-q", typeof vq === "number" ? `${vq} frame${vq === 1 ? "" : "s"}` : "–");
    setText("stat-audio-out", `${fmt(q.audio_out_ms, 0)} ms`);
    const lat = s.latency_ms || {};
    const rows = Object.entries(lat).map(([stage, v]) => {
      const tr = document.createElement("tr");
      for (const cell of [stage, fmt(v.p50, 2), fmt(v.p99, 2), fmt(v.max, 2)]) {
        const td = document.createElement(cell === stage ? "th" : "td");
        if (cell === stage) td.scope = "row";
        td.textContent = cell;
        tr.appendChild(td);
      }
      return tr;
    });
    if (rows.length) ui.latencyBody.replaceChildren(...rows);
  }

  async function pollBrowserStats(pc, run) {
    if (run !== st.run || pc.signalingState === "closed") return;
    let report;
    try {
      report = await pc.getStats();
    } catch {
      return;
    }
    let video = null;
    let rtt = null;
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && (s.kind || s.mediaType) === "video") video = s;
      if (s.type === "candidate-pair" && s.state === "succeeded" && s.nominated &&
          typeof s.currentRoundTripTime === "number") rtt = s.currentRoundTripTime * 1000;
    });
    const b = st.browser;
    if (video) {
      const now = video.timestamp;
      const decoded = video.framesDecoded || 0;
      const prev = st.prevVideoSample;
      if (typeof video.framesPerSecond === "number") {
        b.fps = video.framesPerSecond;
      } else if (prev && now > prev.t) {
        b.fps = ((decoded - prev.n) * 1000) / (now - prev.t);
      }
      st.prevVideoSample = { t: now, n: decoded };
      b.framesDecoded = decoded;
      b.width = video.frameWidth || ui.video.videoWidth || 0;
      b.height = video.frameHeight || ui.video.videoHeight || 0;
      b.packetsLost = video.packetsLost || 0;
    }
    b.rttMs = rtt;
    const target = st.session ? st.session.fps : 0;
    setText("stat-rx-fps", `${fmt(b.fps)} / ${fmt(target, 0)}`);
    $("stat-rx-fps").classList.toggle("bad", target > 0 && b.fps < 0.9 * target);
    setText("stat-decoded", String(b.framesDecoded));
    setText("stat-rx-size", b.width ? `${b.width}×${b.height}` : "–");
    setText("stat-rx-lost", String(b.packetsLost));
    setText("stat-rtt", b.rttMs === null ? "–" : `${fmt(b.rttMs, 1)} ms`);
  }

  function resetStatsView() {
    for (const el of document.querySelectorAll("#stats .v")) {
      el.textContent = "–";
      el.classList.remove("bad", "on");
    }
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = 4;
    td.className = "empty";
    td.textContent = "no data yet";
    tr.appendChild(td);
    ui.latencyBody.replaceChildren(tr);
  }

  // ----- media sources -------------------------------------------------------------------

  async function openMicrophone() {
    const md = navigator.mediaDevices;
    if (!md || typeof md.getUserMedia !== "function") {
      throw new Failure("no_media_api",
        "This browser does not allow microphone access on this page: browsers only give " +
        "it to https:// pages and to http://localhost. Open the page over HTTPS or on " +
        "localhost, or use \"Speak a file\".");
    }
    try {
      return await md.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
        video: false,
      });
    } catch (e) {
      switch (e && e.name) {
        case "NotAllowedError":
        case "PermissionDeniedError":
        case "SecurityError":
          throw new Failure("mic_denied",
            "Microphone permission denied. Allow microphone access for this site (the icon " +
            "in the address bar), then press Start again, or use \"Speak a file\".");
        case "NotFoundError":
        case "DevicesNotFoundError":
        case "OverconstrainedError":
          throw new Failure("no_mic",
            "No microphone was found. Connect one and press Start again, or use " +
            "\"Speak a file\".");
        case "NotReadableError":
        case "TrackStartError":
        case "AbortError":
          throw new Failure("mic_busy",
            "The microphone could not be opened (another application may be using it): " +
            `${e.message || e.name}.`);
        default:
          throw new Failure("mic_error",
            `The microphone could not be opened: ${(e && (e.message || e.name)) || e}.`);
      }
    }
  }

  // Browsers hide their own network addresses (behind mDNS ".local" names) from pages
  // that have no microphone permission, and the server usually cannot resolve those names,
  // so a file-only session would never connect. Asking for the microphone once (and closing
  // it at once) lets the browser offer its real addresses; if the user declines we go on
  // and a failed connection says why.
  /** Browsers show their real network address only to pages allowed a microphone; a
   *  short probe unlocks it. ``onlyIfPermitted`` (watch mode) never asks the user. */
  async function unlockNetworkAddresses(onlyIfPermitted = false) {
    const md = navigator.mediaDevices;
    if (!md || typeof md.getUserMedia !== "function") return false;
    if (onlyIfPermitted) {
      try {
        const p = await navigator.permissions.query({ name: "microphone" });
        if (p.state !== "granted") return false;
      } catch {
        return false;
      }
    }
    try {
      const probe = await md.getUserMedia({ audio: true, video: false });
      for (const t of probe.getTracks()) t.stop();
      return true;
    } catch (e) {
      return false;
    }
  }

  async function openFile() {
    const file = ui.file.files && ui.file.files[0];
    if (!file) {
      throw new Failure("no_file",
        "Choose an audio file to speak first, or switch the voice back to Microphone.");
    }
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) throw new Failure("no_webaudio", "This browser has no Web Audio support.");
    const ctx = new Ctx();
    st.audioCtx = ctx;
    await ctx.resume().catch(() => {});
    let buffer;
    try {
      buffer = await ctx.decodeAudioData(await file.arrayBuffer());
    } catch (e) {
      throw new Failure("bad_file",
        `Could not decode "${file.name}" as audio (${(e && (e.message || e.name)) || e}). ` +
        "Try a WAV, MP3, Ogg or M4A file.");
    }
    const dest = ctx.createMediaStreamDestination();
    dest.channelCount = 1;
    st.fileBuffer = buffer;
    st.fileDest = dest;
    st.fileName = file.name;
    return dest.stream;
  }

  function playFile() {
    if (!st.audioCtx || !st.fileBuffer || !st.fileDest) return;
    if (st.fileNode) {
      st.fileNode.onended = null;
      try { st.fileNode.stop(); } catch { /* already stopped */ }
    }
    const node = st.audioCtx.createBufferSource();
    node.buffer = st.fileBuffer;
    node.loop = ui.loop.checked;
    node.connect(st.fileDest);
    node.onended = () => {
      if (st.fileNode !== node) return;
      st.fileNode = null;
      if (st.phase === "connected") {
        showMessage("info", "file_done", `Finished speaking "${st.fileName}". ` +
          "Press \"Play again\" to repeat it.");
      }
    };
    st.fileNode = node;
    node.start();
    clearMessage("file_done");
  }

  // ----- WebRTC --------------------------------------------------------------------------

  function waitIceGathering(pc, run) {
    return new Promise((resolve, reject) => {
      if (pc.iceGatheringState === "complete") {
        resolve();
        return;
      }
      const done = () => {
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", check);
        pc.removeEventListener("icecandidate", onCandidate);
        if (run !== st.run) reject(new Cancelled());
        else resolve();
      };
      const check = () => { if (pc.iceGatheringState === "complete") done(); };
      const onCandidate = (ev) => { if (!ev.candidate) done(); };
      // A slow interface should not block forever: go on with what was gathered.
      const timer = setTimeout(done, ICE_GATHER_TIMEOUT_MS);
      pc.addEventListener("icegatheringstatechange", check);
      pc.addEventListener("icecandidate", onCandidate);
    });
  }

  async function postOffer(offer, token) {
    const body = { sdp: offer.sdp, type: offer.type };
    if (token) body.token = token;
    let resp;
    try {
      resp = await fetch("/offer", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
        cache: "no-store",
      });
    } catch (e) {
      throw new Failure("server_unreachable",
        `Cannot reach the avatar server at ${location.origin} (${e.message || e}). ` +
        "Is \"etf serve\" still running? Start it and press Start again.");
    }
    let data = null;
    try {
      data = await resp.json();
    } catch {
      data = null;
    }
    if (resp.ok && data && typeof data.sdp === "string") return data;
    const serverText = (data && data.message) || resp.statusText || "no details";
    if (resp.status === 401) {
      ui.tokenCard.hidden = false;
      throw new Failure("token_refused", token
        ? "Token refused: the server did not accept this access token (401). Check the " +
          "token and press Start again."
        : "Token required: this server only accepts clients with an access token (401). " +
          "Enter it in the Access token field and press Start again.");
    }
    if (resp.status === 503) {
      throw new Failure("at_capacity",
        `The server is at capacity and cannot take another session right now (503): ` +
        `${serverText}`);
    }
    if (resp.ok) {
      throw new Failure("offer_error", "The server answered the offer without an SDP answer.");
    }
    const code = data && data.error ? `${resp.status} ${data.error}` : String(resp.status);
    throw new Failure("offer_error", `The server refused the connection (${code}): ${serverText}`);
  }

  function watchConnection(pc, run) {
    const onState = () => {
      if (run !== st.run) return;
      // Firefox before 113 has no connectionState; fall back to the ICE state.
      const s = pc.connectionState || pc.iceConnectionState;
      if (s === "connected" || s === "completed") {
        clearTimeout(st.timers.connect);
        if (st.phase !== "connected") {
          setPhase("connected");
          clearMessage("webrtc_disconnected");
          if (st.fileBuffer) playFile();
        } else {
          clearMessage("webrtc_disconnected");
        }
      } else if (s === "disconnected") {
        showMessage("warn", "webrtc_disconnected",
          "The media connection to the server was interrupted; waiting for it to recover…");
      } else if (s === "failed") {
        const hidden = st.addressesUnlocked === false
          ? " Without microphone permission the browser hides its network address, which " +
            "the server cannot resolve: allow the microphone once and try again." : "";
        endSession(run, "webrtc_failed",
          "The WebRTC media connection failed: the browser and the server could not exchange " +
          "media (blocked UDP, a firewall, or the server ended the session)." + hidden +
          " Press Start to try again.");
      } else if (s === "closed" && st.phase !== "ended") {
        endSession(run, "webrtc_closed", "The media connection was closed.");
      }
    };
    pc.addEventListener("connectionstatechange", onState);
    if (!("connectionState" in pc)) pc.addEventListener("iceconnectionstatechange", onState);
  }

  async function start() {
    if (["starting", "connecting", "connected"].includes(st.phase)) return;
    teardown();
    const run = ++st.run;
    const check = () => { if (run !== st.run) throw new Cancelled(); };
    clearMessage();
    resetStatsView();
    st.lastError = null;
    setPhase("starting");
    try {
      const source = document.querySelector("input[name=source]:checked").value;
      const useFile = source === "file";
      const watch = source === "watch"; // no microphone: the server's speech only
      st.addressesUnlocked = useFile ? await unlockNetworkAddresses()
        : watch ? await unlockNetworkAddresses(true) : true;
      let stream = null;
      let track = null;
      if (!watch) {
        stream = useFile ? await openFile() : await openMicrophone();
        if (run !== st.run) {
          for (const t of stream.getTracks()) t.stop();
          throw new Cancelled();
        }
        if (!useFile) st.micStream = stream;
        track = stream.getAudioTracks()[0];
        if (!track) throw new Failure("mic_error", "The audio source produced no audio track.");
      }

      const pc = new RTCPeerConnection({ iceServers: [] });
      st.pc = pc;
      st.remoteStream = new MediaStream();
      if (watch) pc.addTransceiver("audio", { direction: "recvonly" });
      else pc.addTransceiver(track, { direction: "sendrecv", streams: [stream] });
      pc.addTransceiver("video", { direction: "recvonly" });
      pc.addEventListener("track", (ev) => {
        if (run !== st.run) return;
        st.remoteStream.addTrack(ev.track);
        if (ui.video.srcObject !== st.remoteStream) ui.video.srcObject = st.remoteStream;
        ui.video.play().catch(() => { /* autoplay of a muted video: retried on 'playing' */ });
      });
      watchConnection(pc, run);

      await pc.setLocalDescription(await pc.createOffer());
      check();
      await waitIceGathering(pc, run);
      const token = ui.token.value.trim();
      const answer = await postOffer(pc.localDescription, token);
      check();
      st.session = answer;
      try {
        await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
      } catch (e) {
        throw new Failure("bad_answer", `The server's answer could not be used: ${e.message}`);
      }
      check();
      if (st.phase === "starting") setPhase("connecting");
      describeSession(answer);
      if (!st.emotionChosen && EMOTIONS.includes(answer.emotion)) st.emotion = answer.emotion;
      if (!st.intensityChosen && typeof answer.intensity === "number") {
        st.intensity = answer.intensity;
        renderIntensity();
      }
      renderEmotions();
      if (answer.control_url) openControl(answer.control_url, token, run);
      st.timers.stats = setInterval(() => pollBrowserStats(pc, run), BROWSER_STATS_MS);
      st.timers.connect = setTimeout(() => {
        if (run === st.run && st.phase === "connecting") {
          endSession(run, "webrtc_timeout",
            `No media connection after ${CONNECT_TIMEOUT_MS / 1000} s: the browser could ` +
            "not reach the server's media (UDP) ports. Press Start to try again.");
        }
      }, CONNECT_TIMEOUT_MS);
    } catch (err) {
      if (err instanceof Cancelled || run !== st.run) return;
      teardown();
      const f = err instanceof Failure ? err
        : new Failure("unexpected", `Could not start: ${(err && err.message) || err}`);
      showMessage("error", f.code, f.message);
      setPhase("failed");
      if (f.code === "token_refused") ui.token.focus();
    }
  }

  function describeSession(a) {
    const parts = [`${a.width}×${a.height} at ${a.fps} fps`];
    if (typeof a.pipeline_delay_ms === "number") {
      parts.push(`pipeline delay ${Math.round(a.pipeline_delay_ms)} ms`);
    }
    ui.sessionInfo.textContent = `Session: ${parts.join(", ")}`;
    if (a.width > 0 && a.height > 0) setAspect(a.width, a.height);
  }

  function setAspect(w, h) {
    ui.stage.style.setProperty("--aspect", `${w} / ${h}`);
    ui.stage.style.setProperty("--ar", String(w / h));
  }

  /** The session ended without the user asking: keep the message, release everything. */
  function endSession(run, code, text) {
    if (run !== st.run) return;
    st.run++;
    teardown();
    showMessage("error", code, text);
    setPhase(code === "session_closed" ? "ended" : "failed");
  }

  function teardown() {
    clearInterval(st.timers.stats);
    clearTimeout(st.timers.connect);
    clearTimeout(st.timers.intensity);
    st.timers = { stats: null, connect: null, intensity: null };
    if (st.ws) {
      const ws = st.ws;
      st.ws = null;
      try { ws.close(1000, "client stopped"); } catch { /* already closing */ }
    }
    st.wsOpened = false;
    if (st.pc) {
      try { st.pc.close(); } catch { /* already closed */ }
      st.pc = null;
    }
    if (st.micStream) {
      for (const t of st.micStream.getTracks()) t.stop();
      st.micStream = null;
    }
    if (st.fileNode) {
      st.fileNode.onended = null;
      try { st.fileNode.stop(); } catch { /* never started */ }
      st.fileNode = null;
    }
    if (st.fileDest) {
      for (const t of st.fileDest.stream.getTracks()) t.stop();
      st.fileDest = null;
    }
    if (st.audioCtx) {
      st.audioCtx.close().catch(() => {});
      st.audioCtx = null;
    }
    st.fileBuffer = null;
    st.remoteStream = null;
    st.confirmedEmotion = null;
    st.confirmedIntensity = null;
    st.prevVideoSample = null;
    st.prevServerSample = null;
    st.serverStats = null;
    ui.sayStatus.textContent = "";
    st.browser = { framesDecoded: 0, fps: 0, width: 0, height: 0, packetsLost: 0, rttMs: null };
    ui.video.srcObject = null;
    ui.sessionInfo.textContent = "";
    renderEmotions();
  }

  function stop() {
    st.run++;
    teardown();
    clearMessage();
    resetStatsView();
    setPhase("idle");
  }

  // ----- say -----------------------------------------------------------------------------

  function say() {
    const text = ui.sayText.value.trim();
    if (!text) return;
    const sent = sendControl({
      type: "say", text, emotion: st.emotion, intensity: st.intensity, id: `say${++st.said}`,
    });
    ui.sayStatus.textContent = sent ? "speaking…" : "start a session first";
  }

  function renderSay() {
    const live = controlOpen();
    ui.say.disabled = !live;
    ui.interrupt.disabled = !live;
  }

  // ----- page setup ----------------------------------------------------------------------

  async function loadHealth() {
    try {
      const resp = await fetch("/health", { cache: "no-store" });
      if (!resp.ok) return;
      const h = await resp.json();
      st.health = h;
      if (h.token_required) ui.tokenCard.hidden = false;
      if (Array.isArray(h.size) && h.size.length === 2 && !st.session) {
        setAspect(h.size[0], h.size[1]);
      }
    } catch (e) {
      if (st.phase === "idle") {
        showMessage("warn", "health_unreachable",
          `The avatar server at ${location.origin} did not answer (${e.message || e}); ` +
          "Start will fail until it is running.");
      }
    }
  }

  function tokenFromHash() {
    const hash = location.hash.replace(/^#/, "");
    if (!hash) return null;
    return new URLSearchParams(hash).get("token");
  }

  function init() {
    const token = tokenFromHash();
    if (token) {
      ui.token.value = token;
      ui.tokenCard.hidden = false;
    }
    ui.start.addEventListener("click", start);
    ui.stop.addEventListener("click", stop);
    ui.messageClose.addEventListener("click", () => clearMessage());
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault(); // Enter in the token field starts the session
      start();
    });
    ui.hear.addEventListener("change", () => {
      ui.hear.dataset.touched = "1";
      ui.video.muted = !ui.hear.checked;
      if (ui.hear.checked) ui.video.play().catch(() => {});
    });
    ui.video.muted = !ui.hear.checked;
    ui.video.addEventListener("playing", () => { ui.placeholder.hidden = true; });
    ui.video.addEventListener("emptied", () => { ui.placeholder.hidden = false; });
    ui.emotions.addEventListener("click", (ev) => {
      const b = ev.target.closest("button[data-emotion]");
      if (b) chooseEmotion(b.dataset.emotion);
    });
    ui.intensity.addEventListener("input", onIntensityInput);
    ui.transition.addEventListener("change", () => {
      ui.transition.value = String(transitionMs());
    });
    const syncSource = () => {
      const source = document.querySelector("input[name=source]:checked").value;
      ui.fileOptions.hidden = source !== "file";
      $("hear-hint").textContent = source === "watch"
        ? "The avatar's audio is the speech it is given (the Say box, or an agent on the " +
          "control channel); no microphone is used."
        : "The avatar's audio is your own voice, delayed to match its lips; it is muted so " +
          "you don't hear yourself late. Use headphones if you turn it on.";
      if (source === "watch" && !ui.hear.dataset.touched) {
        ui.hear.checked = true; // the voice is the server's, not an echo of the user's
        ui.video.muted = false;
      }
    };
    for (const r of document.querySelectorAll("input[name=source]")) {
      r.addEventListener("change", syncSource);
    }
    syncSource();
    ui.replay.addEventListener("click", playFile);
    ui.sayForm.addEventListener("submit", (ev) => { ev.preventDefault(); say(); });
    ui.sayText.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); say(); }
    });
    ui.interrupt.addEventListener("click", () => {
      if (sendControl({ type: "interrupt" })) ui.sayStatus.textContent = "interrupted";
    });
    ui.loop.addEventListener("change", () => {
      if (st.fileNode) st.fileNode.loop = ui.loop.checked;
    });
    window.addEventListener("pagehide", () => { st.run++; teardown(); });
    renderEmotions();
    renderIntensity();
    setPhase("idle");
    loadHealth();
  }

  window.etf = {
    get state() { return st.phase; },
    get lastError() { return st.lastError; },
    get session() { return st.session; },
    get serverStats() { return st.serverStats; },
    get browserStats() { return { ...st.browser }; },
    get emotion() { return st.emotion; },
    get confirmedEmotion() { return st.confirmedEmotion; },
    get confirmedIntensity() { return st.confirmedIntensity; },
    get sent() { return { ...st.sent }; },
    framesDecoded() { return st.browser.framesDecoded; },
    sendControl,
    say,
    start,
    stop,
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
