"""The cohort report: results/cohort/report.html and the MultiQC custom-content files.

One concern per module:
- `settings`: the config section `report` as a dataclass
- `qc`: QC flags (no tissue, outliers from the cohort median, mpp from the sheet, large
  slides), each with the sentence that explains it
- `sizes`: nucleus areas per class from the instance tables (histogram, median)
- `pictures`: slide pictures resized and embedded as data URIs
- `records`: one record per slide, built on `histoflow.cohort.slide_row`
- `plots`: per-class density and nucleus-size plots as inline SVG (matplotlib)
- `page`: the self-contained HTML page (the table and gallery are drawn by
  `assets/report.js` from embedded JSON, one page of rows at a time)
- `multiqc`: the `*_mqc.yaml` files `multiqc results/` reads
- `build`: `write_report`, the stage's entry
"""
