// One WebSocket to /api/live with automatic reconnect that resumes where it stopped.

import { apply, emptyState, parseMessage, type DashboardState } from "./protocol";

export type ConnectionStatus = "connecting" | "live" | "reconnecting";

export interface LiveFeedOptions {
  url?: string;
  onChange: (state: DashboardState) => void;
  onStatus: (status: ConnectionStatus) => void;
}

const MIN_DELAY_MS = 250;
const MAX_DELAY_MS = 10_000;

export class LiveFeed {
  readonly state: DashboardState = emptyState();
  private socket?: WebSocket;
  private attempts = 0;
  private haveSnapshot = false;
  private stopped = false;

  constructor(private readonly options: LiveFeedOptions) {}

  start(): void {
    this.stopped = false;
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    this.socket?.close();
  }

  private connect(): void {
    const base = this.options.url ?? defaultUrl();
    // Resume from the last applied sequence number; without one the server sends a snapshot.
    const url = this.haveSnapshot ? `${base}?since=${this.state.seq}` : base;
    this.options.onStatus(this.attempts === 0 ? "connecting" : "reconnecting");
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.onopen = () => {
      this.attempts = 0;
      this.options.onStatus("live");
    };
    socket.onmessage = (event) => {
      const message = parseMessage(String(event.data));
      if (!message) return;
      const applied = apply(this.state, message);
      if (message.type === "snapshot") this.haveSnapshot = true;
      if (applied === "resync") {
        this.haveSnapshot = false;
        socket.close();
        return;
      }
      if (applied === "changed") this.options.onChange(this.state);
    };
    socket.onclose = () => {
      if (this.socket !== socket || this.stopped) return;
      this.attempts += 1;
      this.options.onStatus("reconnecting");
      const backoff = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** Math.min(this.attempts, 6));
      // Jitter spreads the reconnects of many open dashboards after a server restart.
      setTimeout(() => this.connect(), backoff / 2 + Math.random() * (backoff / 2));
    };
  }
}

function defaultUrl(): string {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/api/live`;
}
