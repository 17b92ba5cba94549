// Immunizations per day: an area + line over the days seen so far, updated in place.

import * as d3 from "d3";
import { palette, transitionMs } from "../palette";

const MARGIN = { top: 12, right: 16, bottom: 28, left: 48 };
const HEIGHT = 200;

interface Point {
  day: Date;
  count: number;
}

export class DailySeries {
  private readonly svg: d3.Selection<SVGSVGElement, unknown, null, undefined>;
  private readonly area: d3.Selection<SVGPathElement, unknown, null, undefined>;
  private readonly line: d3.Selection<SVGPathElement, unknown, null, undefined>;
  private readonly xAxis: d3.Selection<SVGGElement, unknown, null, undefined>;
  private readonly yAxis: d3.Selection<SVGGElement, unknown, null, undefined>;
  private readonly width: number;

  constructor(container: HTMLElement) {
    this.width = Math.max(420, container.clientWidth || 560);
    this.svg = d3
      .select(container)
      .append("svg")
      .attr("role", "img")
      .attr("aria-label", "Immunizations per day")
      .attr("width", "100%")
      .attr("viewBox", `0 0 ${this.width} ${HEIGHT}`);
    const plot = this.svg.append("g").attr("transform", `translate(${MARGIN.left},${MARGIN.top})`);
    this.area = plot.append("path").attr("fill", palette.sky).attr("fill-opacity", 0.35);
    this.line = plot.append("path").attr("fill", "none").attr("stroke", palette.blue).attr("stroke-width", 2);
    this.xAxis = plot.append("g").attr("transform", `translate(0,${HEIGHT - MARGIN.top - MARGIN.bottom})`);
    this.yAxis = plot.append("g");
  }

  update(days: Map<string, number>): void {
    const points: Point[] = [...days]
      .map(([day, count]) => ({ day: new Date(`${day}T00:00:00Z`), count }))
      .filter((p) => !Number.isNaN(p.day.getTime()))
      .sort((a, b) => a.day.getTime() - b.day.getTime());
    const innerWidth = this.width - MARGIN.left - MARGIN.right;
    const innerHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
    const extent = d3.extent(points, (p) => p.day) as [Date, Date] | [undefined, undefined];
    const x = d3
      .scaleUtc()
      .domain(extent[0] ? extent : [new Date(Date.now() - 86_400_000), new Date()])
      .range([0, innerWidth]);
    const y = d3.scaleLinear().domain([0, d3.max(points, (p) => p.count) ?? 1]).nice().range([innerHeight, 0]);
    const t = d3.transition().duration(transitionMs());
    this.area
      .datum(points)
      .transition(t)
      .attr("d", d3.area<Point>().x((p) => x(p.day)).y0(innerHeight).y1((p) => y(p.count)).curve(d3.curveMonotoneX));
    this.line
      .datum(points)
      .transition(t)
      .attr("d", d3.line<Point>().x((p) => x(p.day)).y((p) => y(p.count)).curve(d3.curveMonotoneX));
    this.xAxis.transition(t).call(d3.axisBottom(x).ticks(6).tickSizeOuter(0));
    this.yAxis.transition(t).call(d3.axisLeft(y).ticks(5).tickFormat(d3.format("~s")));
  }
}
