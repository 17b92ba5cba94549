// The pipeline panel: events/s per topic, and per processor its lag, retries and dead letters.

import * as d3 from "d3";
import type { Pipeline } from "../protocol";

export class PipelinePanel {
  private readonly topics: d3.Selection<HTMLTableSectionElement, unknown, null, undefined>;
  private readonly processors: d3.Selection<HTMLTableSectionElement, unknown, null, undefined>;
  private readonly deadLetters: d3.Selection<HTMLParagraphElement, unknown, null, undefined>;

  constructor(container: HTMLElement) {
    const root = d3.select(container);
    this.topics = table(root, "Events per second by topic", ["Topic", "Events/s"]);
    this.processors = table(root, "Processors", ["Processor", "Lag", "Retried", "Dead-lettered"]);
    this.deadLetters = root.append("p").attr("class", "dlq");
  }

  update(pipeline: Pipeline): void {
    const number = d3.format(",.0f");
    this.topics
      .selectAll<HTMLTableRowElement, Pipeline["topics"][number]>("tr")
      .data(
        [...pipeline.topics].sort((a, b) => b.eventsPerSecond - a.eventsPerSecond),
        (d) => d.topic,
      )
      .join((enter) => {
        const tr = enter.append("tr");
        tr.append("td").attr("class", "name");
        tr.append("td").attr("class", "num");
        return tr;
      })
      .call((tr) => {
        tr.select("td.name").text((d) => d.topic);
        tr.select("td.num").text((d) => d3.format(",.1f")(d.eventsPerSecond));
      })
      .order();
    this.processors
      .selectAll<HTMLTableRowElement, Pipeline["processors"][number]>("tr")
      .data(pipeline.processors, (d) => d.processor)
      .join((enter) => {
        const tr = enter.append("tr");
        tr.append("td").attr("class", "name");
        tr.append("td").attr("class", "num lag");
        tr.append("td").attr("class", "num retried");
        tr.append("td").attr("class", "num dead");
        return tr;
      })
      .call((tr) => {
        tr.select("td.name").text((d) => d.processor);
        tr.select("td.lag").text((d) => number(d.lag));
        tr.select("td.retried").text((d) => number(d.retried));
        tr.select("td.dead").text((d) => number(d.deadLettered));
      });
    this.deadLetters.text(`Dead-letter queue: ${number(pipeline.deadLetterSize)} record(s)`);
  }
}

function table(
  root: d3.Selection<HTMLElement, unknown, null, undefined>,
  caption: string,
  headings: string[],
): d3.Selection<HTMLTableSectionElement, unknown, null, undefined> {
  const t = root.append("table");
  t.append("caption").text(caption);
  t.append("thead")
    .append("tr")
    .selectAll("th")
    .data(headings)
    .join("th")
    .attr("scope", "col")
    .text((h) => h);
  return t.append("tbody");
}
