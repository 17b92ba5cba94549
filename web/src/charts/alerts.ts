// The sepsis alerts feed: newest first, keyed by episode id so an updated alert changes in place.

import * as d3 from "d3";
import type { Criterion, SepsisAlert } from "../protocol";

const MAX_ALERTS = 50;

export const criterionLabel: Record<Criterion, string> = {
  rr: "Respiratory rate ≥ 22/min",
  sbp: "Systolic BP ≤ 100 mmHg",
  gcs: "Altered mentation (GCS < 15)",
};

const shortLabel: Record<Criterion, string> = { rr: "RR", sbp: "SBP", gcs: "GCS" };

export class AlertsFeed {
  private readonly list: d3.Selection<HTMLUListElement, unknown, null, undefined>;

  constructor(container: HTMLElement, private readonly empty: HTMLElement) {
    this.list = d3.select(container).append("ul").attr("class", "alerts").attr("aria-live", "polite");
  }

  update(alerts: Iterable<SepsisAlert>): void {
    const data = [...alerts].sort((a, b) => b.updatedAt.localeCompare(a.updatedAt)).slice(0, MAX_ALERTS);
    this.empty.hidden = data.length > 0;
    this.list
      .selectAll<HTMLLIElement, SepsisAlert>("li")
      .data(data, (a) => a.id)
      .join((enter) => {
        const li = enter.append("li");
        li.append("span").attr("class", "score");
        const body = li.append("div").attr("class", "body");
        body.append("a").attr("class", "patient");
        body.append("div").attr("class", "criteria");
        li.append("time");
        return li;
      })
      .attr("class", (a) => `alert ${a.status}`)
      .call((li) => {
        li.select(".score")
          .text((a) => a.score)
          .attr("aria-label", (a) => `qSOFA score ${a.score}`)
          .attr("title", "qSOFA score");
        li.select<HTMLAnchorElement>("a.patient")
          .attr("href", (a) => `#/patient/${encodeURIComponent(a.patient.replace(/^Patient\//, ""))}`)
          .text((a) => `${a.patientName ?? a.patient}${a.status === "resolved" ? " (resolved)" : ""}`);
        li.select(".criteria")
          .selectAll("span")
          .data((a) => a.criteria)
          .join("span")
          .attr("class", "chip")
          .attr("title", (c) => criterionLabel[c])
          .text((c) => shortLabel[c]);
        li.select("time")
          .attr("datetime", (a) => a.updatedAt)
          .text((a) => formatTime(a.updatedAt));
      })
      .order();
  }
}

export function formatTime(iso: string): string {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}
