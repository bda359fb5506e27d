"""Acute trusts' HL7 v2.4 ADT feeds, laid out as the NHS England ITK v2.4 examples are.

Each trust writes the same events its own way, as real ones do:

* PID-3: ``nhs-nh-first`` ``<nhs>^^^NHS^NH~<mrn>^^^<ods>^MR`` (DESIGN.md's canonical form);
  ``mrn-first-no-type`` ``<mrn>^^^<ods>^PAS~<nhs>^^^NHS`` (the ITK examples' PAS number first and
  no type code); ``ods-authority-hn`` ``<nhs>^^^<ods>^HN~<mrn>^^^<ods>^MR`` (ODS code as
  assigning authority, type HN).
* PID-8: ``F``/``M`` (HL7 table 0001), except the ``mrn-first-no-type`` trust, which sends the NHS
  Data Dictionary's ``2``/``1`` as the ITK examples do.
* DG1 and PV2-3 coding: SNOMED CT (``SCT``), ICD-10 with dots (``I10``) or ICD-10 without dots
  (``ICD10``, ``E160``).
* PV1-4 carries the NHS admission method (21 via A&E, 22 via GP, 28 other, 11/12 elective).

An emergency department visit is A04 (PV1-2 ``E``) and A03 when the patient leaves, with PV1-36
the A&E disposal (01 admitted, 02 GP follow-up, 03 no follow-up). An admission is A01 (PV1-2
``I``), A02 on each ward move, A08 when details change and A03 at discharge, with PV1-36 the
discharge method (1 clinical advice, 4 died) and PV1-37 the destination (19 home, 79 died).
Outpatient attendances are A04/A03 with PV1-2 ``O``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from joinedup.synth import clock as clk
from joinedup.synth import identity, vocabulary
from joinedup.synth.clock import Clock
from joinedup.synth.events import Event, Kind
from joinedup.synth.noise import Noise
from joinedup.synth.person import Person
from joinedup.synth.world import Hospital, Practice

PID_STYLES = ("nhs-nh-first", "mrn-first-no-type", "ods-authority-hn")
_CODING_SYSTEM = {"snomed": "SCT", "icd10": "I10", "icd10-nodot": "ICD10"}
_MINUTE = 1.0 / 1440.0
_SERVICE_BY_DIAGNOSIS = {
    "hypoglycaemia": "diabetic-medicine",
    "diabetic-ketoacidosis": "diabetic-medicine",
    "hip-fracture": "trauma",
    "heart-failure": "cardiology",
    "atrial-fibrillation": "cardiology",
    "delirium": "geriatric-medicine",
}


@dataclass(slots=True)
class Hl7Out:
    sent: int  # epoch seconds
    occurred: int
    body: str


@dataclass(slots=True)
class _Identity:
    nhs: str | None  # as written in the message (may be spaced, mistyped or absent)
    mrn: str


class AcuteFeed:
    """Writes one trust's ADT messages for the patients of one practice."""

    def __init__(self, hospital: Hospital, practice: Practice, clock: Clock, noise: Noise) -> None:
        self.hospital = hospital
        self.practice = practice
        self.clock = clock
        self.noise = noise
        self.ods = hospital.ods
        self.system = _CODING_SYSTEM[hospital.diagnosis_coding]
        self._pd1 = self._pd1_segment()

    # --- segments -----------------------------------------------------------------------------

    def _msh(self, trigger: str, structure: str, ts: str, control: str) -> str:
        return (
            f"MSH|^~\\&|PAS|{self.ods}|JOINEDUP|JOINEDUP|{ts}||ADT^{trigger}^{structure}|"
            f"{control}|P|2.4|||AL|NE|GBR|UNICODE|EN"
        )

    def _pid(self, person: Person, who: _Identity, died: str = "") -> str:
        given, family = identity.person_name(person.index, person.female)
        line, postcode = identity.address(person.index)
        style = self.hospital.pid_style
        ids: list[str] = []
        if style == "nhs-nh-first":
            if who.nhs:
                ids.append(f"{who.nhs}^^^NHS^NH")
            ids.append(f"{who.mrn}^^^{self.ods}^MR")
            sex = "F" if person.female else "M"
        elif style == "mrn-first-no-type":
            ids.append(f"{who.mrn}^^^{self.ods}^PAS")
            if who.nhs:
                ids.append(f"{who.nhs}^^^NHS")
            sex = "2" if person.female else "1"
        else:
            if who.nhs:
                ids.append(f"{who.nhs}^^^{self.ods}^HN")
            ids.append(f"{who.mrn}^^^{self.ods}^MR")
            sex = "F" if person.female else "M"
        title = ("MRS" if person.age >= 30 else "MS") if person.female else "MR"
        birth = clk.hl7_date(person.birth_date)
        fields = [
            "PID",
            "1",
            "",
            "~".join(ids),
            "",
            f"{family.upper()}^{given.upper()}^^^{title}^^L",
            "",
            birth,
            sex,
            "",
            "",
            f"{line.upper()}^^LONDON^^{postcode}^GBR^H",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            person.ethnicity,
        ]
        if died:
            fields += ["", "", "", "", "", "", died, "Y"]
        return "|".join(fields)

    def _pd1_segment(self) -> str:
        gp = self.practice.gps[0]
        return (
            f"PD1|||{self.practice.name.upper()}^^{self.practice.ods}|"
            f"{gp.registration}^{gp.family}^{gp.given}^^^Dr^^^GMC"
        )

    def _pv1(
        self,
        klass: str,
        location: str,
        method: str,
        service: str,
        visit: str,
        admit: str,
        discharge: str = "",
        disposition: str = "",
        destination: str = "",
        prior_location: str = "",
        attending: str = "",
    ) -> str:
        fields = [""] * 46
        fields[0] = "PV1"
        fields[1] = "1"
        fields[2] = klass
        fields[3] = location
        fields[4] = method
        fields[6] = prior_location
        fields[7] = attending
        fields[10] = vocabulary.TREATMENT_FUNCTION[service][0]
        fields[19] = f"{visit}^^^{self.ods}^VN"
        fields[36] = disposition
        fields[37] = destination
        fields[44] = admit
        fields[45] = discharge
        return "|".join(fields)

    def _coded(self, concept: vocabulary.Concept) -> str:
        coding = self.hospital.diagnosis_coding
        if coding == "snomed":
            return f"{concept.snomed}^{concept.display}^SCT"
        if coding == "icd10":
            return f"{concept.icd10}^{concept.icd10_text()}^I10"
        return f"{concept.icd10.replace('.', '')}^{concept.icd10_text()}^ICD10"

    def _dg1(self, set_id: int, concept: vocabulary.Concept, ts: str, kind: str) -> str:
        return f"DG1|{set_id}||{self._coded(concept)}||{ts}|{kind}"

    def _attending(self, serial: int) -> str:
        doctor = self.hospital.consultants[serial % len(self.hospital.consultants)]
        return f"{doctor.registration}^{doctor.family}^{doctor.given}^^^Dr^^^GMC"

    # --- messages -------------------------------------------------------------------------------

    def messages(self, person: Person, event: Event, rng: random.Random, nhs: str) -> list[Hl7Out]:
        """Every message one acute event produces at this trust (noise included)."""
        who = self._identity(person, rng, nhs)
        out: list[tuple[float, str]] = []  # (occurred day, message without MSH)
        temporary: _Identity | None = None
        merge_at: float | None = None
        if event.ed_arrival is not None and rng.random() < self.noise.hl7_unknown_patient:
            temporary = _Identity(
                None,
                identity.temporary_hospital_number(
                    self.hospital.index, person.index * 1000 + event.serial
                ),
            )
            merge_at = event.ed_arrival + rng.uniform(1.0, 48.0) / 24.0
        if event.kind is Kind.ED:
            out += self._ed_visit(person, event, who, admitted_at=None)
        elif event.kind is Kind.EMERGENCY:
            if event.ed_arrival is not None:
                out += self._ed_visit(person, event, who, admitted_at=event.start)
            out += self._admission(person, event, who, rng)
        elif event.kind is Kind.ELECTIVE:
            out += self._admission(person, event, who, rng)
        elif event.kind is Kind.OUTPATIENT:
            out += self._outpatient(person, event, who)
        if temporary is not None and merge_at is not None:
            out = [
                (
                    t,
                    body.replace(self._pid(person, who), self._pid(person, temporary), 1)
                    if t < merge_at
                    else body,
                )
                for t, body in out
            ]
            merge = "\r".join(
                [
                    f"EVN|A40|{clk.hl7(self.clock.epoch(merge_at))}",
                    self._pid(person, who),
                    self._pd1,
                    f"MRG|{temporary.mrn}^^^{self.ods}^MR",
                ]
            )
            out.append((merge_at, "A40^ADT_A39\n" + merge))
        return self._envelope(person, event, out, rng)

    def _identity(self, person: Person, rng: random.Random, nhs: str) -> _Identity:
        mrn = identity.hospital_number(self.hospital.index, person.index)
        u = rng.random()
        n = self.noise
        if u < n.nhs_missing:
            return _Identity(None, mrn)
        if u < n.nhs_missing + n.nhs_spaces:
            return _Identity(identity.with_spaces(nhs), mrn)
        if u < n.nhs_missing + n.nhs_spaces + n.nhs_typo:
            return _Identity(identity.corrupt_check_digit(nhs), mrn)
        return _Identity(nhs, mrn)

    def _ed_visit(
        self, person: Person, event: Event, who: _Identity, admitted_at: float | None
    ) -> list[tuple[float, str]]:
        assert event.ed_arrival is not None
        arrival = event.ed_arrival
        leaves = admitted_at if admitted_at is not None else event.end
        visit = f"E{person.index:07d}{event.serial:04d}"
        concept = vocabulary.DIAGNOSES[event.diagnosis]
        arrive_ts = clk.hl7(self.clock.epoch(arrival))
        leave_ts = clk.hl7(self.clock.epoch(leaves))
        location = f"{self.ods}^ED^CUBICLE{event.serial % 20 + 1}^{self.ods}"
        pid = self._pid(person, who)
        register = "\r".join(
            [
                f"EVN|A04|{arrive_ts}",
                pid,
                self._pd1,
                self._pv1("E", location, "", "emergency", visit, arrive_ts),
                f"PV2|||{self._coded(concept)}",
                self._dg1(1, concept, arrive_ts, "W"),
            ]
        )
        disposal = "01" if admitted_at is not None else ("02" if person.age >= 65 else "03")
        leave = "\r".join(
            [
                f"EVN|A03|{leave_ts}",
                pid,
                self._pd1,
                self._pv1("E", location, "", "emergency", visit, arrive_ts, leave_ts, disposal),
                self._dg1(1, concept, leave_ts, "F"),
            ]
        )
        return [(arrival, "A04^ADT_A01\n" + register), (leaves, "A03^ADT_A03\n" + leave)]

    def _admission(
        self, person: Person, event: Event, who: _Identity, rng: random.Random
    ) -> list[tuple[float, str]]:
        visit = f"I{person.index:07d}{event.serial:04d}"
        emergency = event.kind is Kind.EMERGENCY
        service = (
            _SERVICE_BY_DIAGNOSIS.get(event.diagnosis, "general-medicine")
            if emergency
            else event.detail or "general-surgery"
        )
        admit_ts = clk.hl7(self.clock.epoch(event.start))
        end_ts = clk.hl7(self.clock.epoch(event.end))
        ward = "AMU" if emergency else "SURG"
        location = f"{self.ods}^{ward}^BED{event.serial % 30 + 1}^{self.ods}"
        attending = self._attending(event.serial)
        method = str(event.method)
        primary = vocabulary.DIAGNOSES.get(event.diagnosis) if event.diagnosis else None
        pid = self._pid(person, who)
        admit_lines = [
            f"EVN|A01|{admit_ts}",
            pid,
            self._pd1,
            self._pv1("I", location, method, service, visit, admit_ts, attending=attending),
        ]
        if primary is not None:
            admit_lines += [f"PV2|||{self._coded(primary)}", self._dg1(1, primary, admit_ts, "A")]
        out = [(event.start, "A01^ADT_A01\n" + "\r".join(admit_lines))]

        if emergency and rng.random() < self.noise.hl7_cancelled_admission:
            wrong = f"X{person.index:07d}{event.serial:04d}"
            at = event.start - rng.uniform(20.0, 60.0) * _MINUTE
            at_ts = clk.hl7(self.clock.epoch(at))
            pv1 = self._pv1("I", location, method, service, wrong, at_ts, attending=attending)
            out.append((at, "A01^ADT_A01\n" + "\r".join([f"EVN|A01|{at_ts}", pid, self._pd1, pv1])))
            cancel = at + rng.uniform(10.0, 30.0) * _MINUTE
            cancel_lines = [f"EVN|A11|{clk.hl7(self.clock.epoch(cancel))}", pid, self._pd1, pv1]
            out.append((cancel, "A11^ADT_A09\n" + "\r".join(cancel_lines)))

        if emergency and rng.random() < self.noise.hl7_a08_update:
            at = min(event.start + rng.uniform(2.0, 12.0) / 24.0, event.end - _MINUTE)
            if at > event.start:
                lines = [
                    f"EVN|A08|{clk.hl7(self.clock.epoch(at))}",
                    pid,
                    self._pd1,
                    self._pv1("I", location, method, service, visit, admit_ts, attending=attending),
                ]
                if primary is not None:
                    lines.append(self._dg1(1, primary, admit_ts, "W"))
                out.append((at, "A08^ADT_A01\n" + "\r".join(lines)))

        previous = location
        for number, moved in enumerate(event.transfers, start=1):
            ward_location = (
                f"{self.ods}^WARD{(event.serial + number) % 12 + 1}^BED{number}^{self.ods}"
            )
            moved_ts = clk.hl7(self.clock.epoch(moved))
            pv1 = self._pv1(
                "I",
                ward_location,
                method,
                service,
                visit,
                admit_ts,
                prior_location=previous,
                attending=attending,
            )
            out.append(
                (moved, "A02^ADT_A02\n" + "\r".join([f"EVN|A02|{moved_ts}", pid, self._pd1, pv1]))
            )
            location, previous = ward_location, ward_location

        if event.end - event.start > 1.0 and rng.random() < self.noise.hl7_cancelled_discharge:
            early = event.start + rng.uniform(0.3, 0.7) * (event.end - event.start)
            early_ts = clk.hl7(self.clock.epoch(early))
            pv1 = self._pv1(
                "I",
                location,
                method,
                service,
                visit,
                admit_ts,
                early_ts,
                "1",
                "19",
                attending=attending,
            )
            out.append(
                (early, "A03^ADT_A03\n" + "\r".join([f"EVN|A03|{early_ts}", pid, self._pd1, pv1]))
            )
            undo = early + rng.uniform(1.0, 3.0) / 24.0
            undo_pv1 = self._pv1(
                "I", location, method, service, visit, admit_ts, attending=attending
            )
            undo_lines = [f"EVN|A13|{clk.hl7(self.clock.epoch(undo))}", pid, self._pd1, undo_pv1]
            out.append((undo, "A13^ADT_A01\n" + "\r".join(undo_lines)))

        died = end_ts if event.died else ""
        discharge_lines = [
            f"EVN|A03|{end_ts}",
            self._pid(person, who, died),
            self._pd1,
            self._pv1(
                "I",
                location,
                method,
                service,
                visit,
                admit_ts,
                end_ts,
                "4" if event.died else "1",
                "79" if event.died else "19",
                attending=attending,
            ),
        ]
        set_id = 1
        if primary is not None:
            discharge_lines.append(self._dg1(set_id, primary, end_ts, "F"))
            set_id += 1
        for name in sorted(person.conditions)[:3]:
            discharge_lines.append(self._dg1(set_id, vocabulary.CONDITIONS[name], end_ts, "F"))
            set_id += 1
        out.append((event.end, "A03^ADT_A03\n" + "\r".join(discharge_lines)))
        return out

    def _outpatient(self, person: Person, event: Event, who: _Identity) -> list[tuple[float, str]]:
        visit = f"O{person.index:07d}{event.serial:04d}"
        start_ts = clk.hl7(self.clock.epoch(event.start))
        end = event.start + 30.0 * _MINUTE
        end_ts = clk.hl7(self.clock.epoch(end))
        location = f"{self.ods}^OPD^CLINIC{event.serial % 8 + 1}^{self.ods}"
        pid = self._pid(person, who)
        attending = self._attending(event.serial)
        pv1 = self._pv1("O", location, "", event.detail, visit, start_ts, attending=attending)
        done = self._pv1(
            "O", location, "", event.detail, visit, start_ts, end_ts, attending=attending
        )
        return [
            (
                event.start,
                "A04^ADT_A01\n" + "\r".join([f"EVN|A04|{start_ts}", pid, self._pd1, pv1]),
            ),
            (end, "A03^ADT_A03\n" + "\r".join([f"EVN|A03|{end_ts}", pid, self._pd1, done])),
        ]

    def _envelope(
        self, person: Person, event: Event, out: list[tuple[float, str]], rng: random.Random
    ) -> list[Hl7Out]:
        """Add MSH (with a stable control id), send times, late delivery and duplicates."""
        messages: list[Hl7Out] = []
        for number, (day, text) in enumerate(sorted(out, key=lambda item: item[0])):
            header, body = text.split("\n", 1)
            trigger, structure = header.split("^")
            occurred = self.clock.epoch(day)
            control = f"{self.ods}{person.index:07d}{event.serial:04d}{number:02d}"
            message = self._msh(trigger, structure, clk.hl7(occurred), control) + "\r" + body
            sent = occurred + rng.randrange(5, 120)
            if rng.random() < self.noise.hl7_late:
                sent += int(rng.uniform(*self.noise.hl7_late_hours) * 3600)
            messages.append(Hl7Out(sent, occurred, message))
            if rng.random() < self.noise.hl7_duplicate:
                messages.append(Hl7Out(sent + rng.randrange(60, 1800), occurred, message))
        self._announcements(person, event, messages)
        return messages

    @staticmethod
    def _announcements(person: Person, event: Event, messages: list[Hl7Out]) -> None:
        """When the trust first told anyone of the attendance (A04) and the admission (A01):
        the earliest time an alert rule could fire on them."""
        stem = f"{person.index:07d}{event.serial:04d}^"
        ed = [m.sent for m in messages if "|ADT^A04^" in m.body and f"|E{stem}" in m.body]
        admitted = [m.sent for m in messages if "|ADT^A01^" in m.body and f"|I{stem}" in m.body]
        if ed:
            event.ed_first_sent = min(ed)
        if event.kind is Kind.ED and ed:
            event.first_sent = min(ed)
        elif admitted:
            event.first_sent = min(admitted)
