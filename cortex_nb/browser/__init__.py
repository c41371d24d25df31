"""The token browser (ipywidgets app, its list / search / views, the intervention panel) and the static atlas."""
