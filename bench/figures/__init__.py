"""One module per figure of the benchmark brief; each measures its product figure and its floors."""
