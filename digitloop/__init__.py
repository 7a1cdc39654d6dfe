"""digitloop: the command line that ties the components together."""
