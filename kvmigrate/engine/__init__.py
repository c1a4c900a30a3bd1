"""What several phases share: the batch and its tally, the page writer, the differ, verified marks,
the guards (writer lock, shrunk-store refusal), the phase flags and the wrong-store checks."""
