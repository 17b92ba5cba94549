import { describe, expect, it } from "vitest";
import { apply, emptyState, parseMessage, type ServerMessage } from "./protocol";

const snapshot: ServerMessage = {
  type: "snapshot",
  seq: 10,
  immunizations: {
    byVaccine: [{ code: "140", display: "Influenza, seasonal", count: 3 }],
    daily: [{ day: "2026-11-20", count: 3 }],
  },
  alerts: [],
};

const delta = (seq: number, count: number): ServerMessage => ({
  type: "delta",
  seq,
  immunization: { vaccine: { code: "140", display: "Influenza, seasonal", count }, day: { day: "2026-11-20", count } },
});

describe("live feed state", () => {
  it("applies a snapshot, then consecutive deltas with absolute counts", () => {
    const state = emptyState();
    expect(apply(state, snapshot)).toBe("changed");
    expect(apply(state, delta(11, 4))).toBe("changed");
    expect(apply(state, delta(12, 5))).toBe("changed");
    expect(state.seq).toBe(12);
    expect(state.vaccines.get("140")?.count).toBe(5);
    expect(state.days.get("2026-11-20")).toBe(5);
  });

  it("ignores a delta replayed after a resume, so nothing is counted twice", () => {
    const state = emptyState();
    apply(state, snapshot);
    apply(state, delta(11, 4));
    expect(apply(state, delta(11, 4))).toBe("ignored");
    expect(apply(state, delta(10, 2))).toBe("ignored");
    expect(state.vaccines.get("140")?.count).toBe(4);
  });

  it("asks for a snapshot on a gap instead of guessing", () => {
    const state = emptyState();
    apply(state, snapshot);
    expect(apply(state, delta(13, 9))).toBe("resync");
    expect(state.seq).toBe(10);
    expect(state.vaccines.get("140")?.count).toBe(3);
  });

  it("removes a vaccine whose count falls to zero (a retracted immunization)", () => {
    const state = emptyState();
    apply(state, snapshot);
    apply(state, delta(11, 0));
    expect(state.vaccines.has("140")).toBe(false);
  });

  it("updates an alert in place by episode id", () => {
    const state = emptyState();
    apply(state, snapshot);
    const alert = {
      id: "e1", patient: "Patient/p1", score: 2, criteria: ["rr", "sbp"] as ("rr" | "sbp" | "gcs")[],
      status: "active" as const, raisedAt: "2026-11-20T10:00:00Z", updatedAt: "2026-11-20T10:00:00Z",
    };
    apply(state, { type: "delta", seq: 11, alert });
    apply(state, { type: "delta", seq: 12, alert: { ...alert, score: 3, criteria: ["rr", "sbp", "gcs"] } });
    expect(state.alerts.size).toBe(1);
    expect(state.alerts.get("e1")?.score).toBe(3);
  });

  it("drops frames that are not protocol messages", () => {
    expect(parseMessage("not json")).toBeUndefined();
    expect(parseMessage('{"type":"delta"}')).toBeUndefined();
    expect(parseMessage('{"type":"other","seq":1}')).toBeUndefined();
    expect(parseMessage('{"type":"delta","seq":3}')?.type).toBe("delta");
  });
});
