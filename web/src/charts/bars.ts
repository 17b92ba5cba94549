// Immunizations by vaccine: horizontal bars keyed by CVX code. The SVG is built once; each
// update joins the new counts to the existing bars (enter/update/exit), so bars move and grow
// in place instead of being redrawn.

import * as d3 from "d3";
import type { VaccineCount } from "../protocol";
import { palette, transitionMs } from "../palette";

const MAX_BARS = 12;
const BAR_HEIGHT = 26;
const MARGIN = { top: 8, right: 56, bottom: 8, left: 220 };

export class VaccineBars {
  private readonly svg: d3.Selection<SVGSVGElement, unknown, null, undefined>;
  private readonly plot: d3.Selection<SVGGElement, unknown, null, undefined>;
  private readonly width: number;

  constructor(container: HTMLElement) {
    this.width = Math.max(420, container.clientWidth || 560);
    this.svg = d3
      .select(container)
      .append("svg")
      .attr("role", "img")
      .attr("aria-label", "Immunizations by vaccine")
      .attr("width", "100%")
      .attr("viewBox", `0 0 ${this.width} ${MARGIN.top + MARGIN.bottom + BAR_HEIGHT}`);
    this.plot = this.svg.append("g").attr("transform", `translate(${MARGIN.left},${MARGIN.top})`);
  }

  update(counts: Iterable<VaccineCount>): void {
    const data = [...counts].sort((a, b) => b.count - a.count || a.code.localeCompare(b.code)).slice(0, MAX_BARS);
    const innerWidth = this.width - MARGIN.left - MARGIN.right;
    const height = Math.max(1, data.length) * BAR_HEIGHT;
    this.svg.attr("viewBox", `0 0 ${this.width} ${MARGIN.top + MARGIN.bottom + height}`);
    const x = d3.scaleLinear().domain([0, d3.max(data, (d) => d.count) ?? 1]).nice().range([0, innerWidth]);
    const y = d3.scaleBand<string>().domain(data.map((d) => d.code)).range([0, height]).padding(0.18);
    const t = d3.transition().duration(transitionMs()).ease(d3.easeCubicOut);

    this.plot
      .selectAll<SVGGElement, VaccineCount>("g.bar")
      .data(data, (d) => d.code)
      .join(
        (enter) => {
          const g = enter
            .append("g")
            .attr("class", "bar")
            .attr("transform", (d) => `translate(0,${y(d.code) ?? 0})`)
            .style("opacity", 0);
          g.append("title");
          g.append("text")
            .attr("class", "label")
            .attr("x", -8)
            .attr("text-anchor", "end")
            .attr("dominant-baseline", "middle");
          g.append("rect").attr("height", y.bandwidth()).attr("width", 0).attr("rx", 3).attr("fill", palette.blue);
          g.append("text").attr("class", "value").attr("dominant-baseline", "middle").attr("x", 6);
          return g;
        },
        (update) => update,
        (exit) => exit.transition(t).style("opacity", 0).remove(),
      )
      .attr("data-code", (d) => d.code)
      .attr("data-count", (d) => d.count)
      .call((g) => {
        g.select("title").text((d) => `${d.display} (CVX ${d.code}): ${d.count}`);
        g.select("text.label")
          .attr("y", y.bandwidth() / 2)
          .text((d) => truncate(d.display || `CVX ${d.code}`, 30));
        g.transition(t)
          .style("opacity", 1)
          .attr("transform", (d) => `translate(0,${y(d.code) ?? 0})`);
        g.select<SVGRectElement>("rect")
          .transition(t)
          .attr("height", y.bandwidth())
          .attr("width", (d) => x(d.count));
        g.select<SVGTextElement>("text.value")
          .attr("y", y.bandwidth() / 2)
          .transition(t)
          .attr("x", (d) => x(d.count) + 6)
          .text((d) => d3.format(",")(d.count));
      });
  }
}

function truncate(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}
