"""`omni-run --serve`: a local web page (microphone with the browser's echo canceller, phone mode and push-to-talk,
voices and cloning, images, text chat) on this runtime. The page drives the same live engine as `omni-run --mic`
through `adapters`; starlette and uvicorn (the `serve` extra) are imported only when serving."""
