"""One module per `onebert` command: HELP, add_arguments(parser), run(args)."""
