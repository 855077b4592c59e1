"""actions.yaml: read with line numbers, substituted, validated, compiled.

    load.py        the one loader: text in, a Config out, or every Problem with its line
    sections.py    the relay's own sections (receiver, store, spool, delivery, ...) as data
    console.py     the console's section
    routing.py     rules: conditions compiled once, matched against each payload
    substitute.py  ``${VAR}``, ``${VAR:-default}``, ``${file:/path}``
    yaml_lines.py  YAML with the line of every value, for messages that point at it
    check.py       `suki-relay check` and `routes test`: routing and rendering without sending

Options themselves are declared with ``suki_relay.options``, the one mechanism that
actions and sections share.
"""
