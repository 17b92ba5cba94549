// The patient view: recent vitals charted against the qSOFA thresholds, read from the FHIR API.

import * as d3 from "d3";
import { palette } from "./palette";
import { meetsCriterion, thresholds, vitalCodes, vitalsOf, type VitalKind, type VitalPoint } from "./vitals";

const WIDTH = 640;
const HEIGHT = 150;
const MARGIN = { top: 10, right: 16, bottom: 26, left: 44 };

export async function showPatient(container: HTMLElement, patientId: string): Promise<void> {
  container.replaceChildren();
  const heading = document.createElement("h2");
  heading.textContent = `Patient ${patientId}`;
  container.append(heading);
  const status = document.createElement("p");
  status.className = "muted";
  status.textContent = "Loading vital signs…";
  container.append(status);
  try {
    const [patient, bundle] = await Promise.all([
      fetchJson(`/fhir/Patient/${encodeURIComponent(patientId)}`),
      fetchJson(
        `/fhir/Observation?patient=${encodeURIComponent(patientId)}&code=${encodeURIComponent(vitalCodes)}&_sort=-date&_count=500`,
      ),
    ]);
    heading.textContent = patientName(patient) ?? `Patient ${patientId}`;
    const entries = ((bundle as { entry?: { resource?: unknown }[] }).entry ?? []).map((e) => e.resource);
    const points = entries.flatMap(vitalsOf);
    status.textContent = points.length
      ? `${points.length} measurements; shaded bands are where a qSOFA point is scored.`
      : "No respiratory rate, blood pressure or GCS on record.";
    for (const kind of ["rr", "sbp", "gcs"] as VitalKind[]) {
      chart(container, kind, points.filter((p) => p.kind === kind));
    }
  } catch (error) {
    status.textContent = `Could not load this patient: ${String(error)}`;
  }
}

async function fetchJson(url: string): Promise<unknown> {
  const response = await fetch(url, { headers: { Accept: "application/fhir+json" } });
  if (!response.ok) throw new Error(`${response.status} ${response.statusText} from ${url}`);
  return response.json();
}

function patientName(patient: unknown): string | undefined {
  const name = (patient as { name?: { given?: string[]; family?: string; text?: string }[] }).name?.[0];
  if (!name) return undefined;
  return name.text ?? [...(name.given ?? []), name.family ?? ""].join(" ").trim();
}

function chart(container: HTMLElement, kind: VitalKind, points: VitalPoint[]): void {
  const threshold = thresholds[kind];
  const figure = d3.select(container).append("figure").attr("class", "vital");
  figure.append("figcaption").text(`${threshold.label}${threshold.unit ? ` (${threshold.unit})` : ""}`);
  const svg = figure
    .append("svg")
    .attr("viewBox", `0 0 ${WIDTH} ${HEIGHT}`)
    .attr("width", "100%")
    .attr("role", "img")
    .attr("aria-label", `${threshold.label} over time with the qSOFA threshold ${threshold.value}`);
  const innerWidth = WIDTH - MARGIN.left - MARGIN.right;
  const innerHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const plot = svg.append("g").attr("transform", `translate(${MARGIN.left},${MARGIN.top})`);
  const sorted = [...points].sort((a, b) => a.time.getTime() - b.time.getTime());
  const extent = d3.extent(sorted, (p) => p.time) as [Date, Date] | [undefined, undefined];
  const x = d3.scaleUtc().domain(extent[0] ? extent : [new Date(Date.now() - 6 * 3_600_000), new Date()]).range([0, innerWidth]);
  const values = sorted.map((p) => p.value).concat(threshold.value);
  const y = d3
    .scaleLinear()
    .domain([Math.min(...values) * 0.9, Math.max(...values) * 1.1])
    .nice()
    .range([innerHeight, 0]);
  const bandTop = threshold.above ? 0 : y(threshold.value);
  const bandBottom = threshold.above ? y(threshold.value) : innerHeight;
  plot
    .append("rect")
    .attr("class", "criterion-band")
    .attr("x", 0)
    .attr("width", innerWidth)
    .attr("y", bandTop)
    .attr("height", Math.max(0, bandBottom - bandTop))
    .attr("fill", palette.vermillion)
    .attr("fill-opacity", 0.08);
  plot
    .append("line")
    .attr("x1", 0)
    .attr("x2", innerWidth)
    .attr("y1", y(threshold.value))
    .attr("y2", y(threshold.value))
    .attr("stroke", palette.vermillion)
    .attr("stroke-dasharray", "4 3");
  plot
    .append("path")
    .datum(sorted)
    .attr("fill", "none")
    .attr("stroke", palette.blue)
    .attr("stroke-width", 1.5)
    .attr("d", d3.line<VitalPoint>().x((p) => x(p.time)).y((p) => y(p.value)));
  plot
    .selectAll("circle")
    .data(sorted)
    .join("circle")
    .attr("cx", (p) => x(p.time))
    .attr("cy", (p) => y(p.value))
    .attr("r", 3.5)
    .attr("fill", (p) => (meetsCriterion(p) ? palette.vermillion : palette.blue))
    .append("title")
    .text((p) => `${p.value}${threshold.unit ? ` ${threshold.unit}` : ""} at ${p.time.toISOString()} (${p.observation})`);
  plot.append("g").attr("transform", `translate(0,${innerHeight})`).call(d3.axisBottom(x).ticks(6));
  plot.append("g").call(d3.axisLeft(y).ticks(4));
}
