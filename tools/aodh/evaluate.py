"""Run Aodh's own event-alarm evaluator on events; print the message ids that fire.

Runs inside the Aodh virtualenv (tools/aodh/setup). Reads ``{"alarm": <an Aodh alarm
definition, as POSTed to /v2/alarms>, "events": [<events as Ceilometer hands them to
Aodh: event_type, message_id, traits [[name, type, value]...]>]}`` on stdin. Aodh's
storage and notifier are left out: ``_fire_alarm`` is where Aodh would change the
alarm's state and call its actions, so that is what is recorded.
"""

import json
import sys

from aodh.evaluator import event as aodh_event


class StoredAlarm:
    """The fields of Aodh's storage model the evaluator reads."""

    def __init__(self, definition):
        self.alarm_id = definition.get("alarm_id", "vigil-test-alarm")
        self.rule = definition["event_rule"]
        self.repeat_actions = definition.get("repeat_actions", False)
        self.state = "insufficient data"


def main():
    data = json.load(sys.stdin)
    fired = []
    evaluator = aodh_event.EventAlarmEvaluator.__new__(aodh_event.EventAlarmEvaluator)
    evaluator._fire_alarm = lambda alarm, event: fired.append(event.id)
    alarm = aodh_event.Alarm(StoredAlarm(data["alarm"]))
    for event in data["events"]:
        evaluator._evaluate_alarm(alarm, aodh_event.Event(event))
    json.dump(fired, sys.stdout)


main()
