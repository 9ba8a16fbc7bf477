from app.cli import main

# The guard matters to `serve --workers N`: each worker is a multiprocessing "spawn" child, which
# imports the parent's main module again (it skips a package's __main__, but not a script's).
if __name__ == "__main__":
    raise SystemExit(main())
