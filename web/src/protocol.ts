// The dashboard's live feed: one WebSocket at /api/live.
//
// The server first sends a `snapshot` (the whole state and the sequence number it reflects),
// then `delta`s numbered seq+1, seq+2, ... Deltas carry absolute values (the new count of a
// bar, the new state of an alert), so applying one twice changes nothing. After a reconnect the
// client asks for `?since=<last seq>`: the server replays the deltas it still holds, or sends a
// fresh snapshot. A gap in sequence numbers makes the client ask for a snapshot.
// `pipeline` messages are gauges (rates, lag), sent periodically and not numbered.

export interface VaccineCount {
  code: string;
  display: string;
  count: number;
}

export interface DayCount {
  day: string; // YYYY-MM-DD (UTC)
  count: number;
}

export type Criterion = "rr" | "sbp" | "gcs";

export interface SepsisAlert {
  id: string; // episode id, stable across updates
  patient: string; // "Patient/123"
  patientName?: string;
  score: number;
  criteria: Criterion[];
  status: "active" | "resolved";
  raisedAt: string;
  updatedAt: string;
  windowStart?: string;
  windowEnd?: string;
}

export interface TopicRate {
  topic: string;
  eventsPerSecond: number;
}

export interface ProcessorLag {
  processor: string;
  lag: number;
  retried: number;
  deadLettered: number;
}

export interface Pipeline {
  topics: TopicRate[];
  processors: ProcessorLag[];
  deadLetterSize: number;
}

export interface DashboardState {
  seq: number;
  vaccines: Map<string, VaccineCount>;
  days: Map<string, number>;
  alerts: Map<string, SepsisAlert>;
  pipeline: Pipeline;
}

export type ServerMessage =
  | {
      type: "snapshot";
      seq: number;
      immunizations: { byVaccine: VaccineCount[]; daily: DayCount[] };
      alerts: SepsisAlert[];
      pipeline?: Pipeline;
    }
  | {
      type: "delta";
      seq: number;
      immunization?: { vaccine: VaccineCount; day?: DayCount };
      alert?: SepsisAlert;
    }
  | ({ type: "pipeline" } & Pipeline);

export function emptyState(): DashboardState {
  return {
    seq: 0,
    vaccines: new Map(),
    days: new Map(),
    alerts: new Map(),
    pipeline: { topics: [], processors: [], deadLetterSize: 0 },
  };
}

/** What applying a message did; `resync` asks the caller to reconnect for a snapshot. */
export type Applied = "changed" | "ignored" | "resync";

/** Applies one server message to the state in place. Pure apart from mutating `state`. */
export function apply(state: DashboardState, message: ServerMessage): Applied {
  switch (message.type) {
    case "snapshot": {
      state.seq = message.seq;
      state.vaccines = new Map(message.immunizations.byVaccine.map((v) => [v.code, v]));
      state.days = new Map(message.immunizations.daily.map((d) => [d.day, d.count]));
      state.alerts = new Map(message.alerts.map((a) => [a.id, a]));
      if (message.pipeline) state.pipeline = message.pipeline;
      return "changed";
    }
    case "delta": {
      if (message.seq <= state.seq) return "ignored"; // already applied (replay after resume)
      if (message.seq !== state.seq + 1) return "resync"; // a gap: never guess
      state.seq = message.seq;
      if (message.immunization) {
        const { vaccine, day } = message.immunization;
        if (vaccine.count > 0) state.vaccines.set(vaccine.code, vaccine);
        else state.vaccines.delete(vaccine.code);
        if (day) state.days.set(day.day, day.count);
      }
      if (message.alert) state.alerts.set(message.alert.id, message.alert);
      return "changed";
    }
    case "pipeline": {
      const { type: _type, ...pipeline } = message;
      state.pipeline = pipeline;
      return "changed";
    }
  }
}

/** Parses a frame; anything unexpected is dropped rather than corrupting the state. */
export function parseMessage(text: string): ServerMessage | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== "object" || value === null) return undefined;
  const type = (value as { type?: unknown }).type;
  if (type === "snapshot" || type === "delta") {
    if (typeof (value as { seq?: unknown }).seq !== "number") return undefined;
    return value as ServerMessage;
  }
  if (type === "pipeline") return value as ServerMessage;
  return undefined;
}
