"""Subjects taken from DICOM headers leave a scan only as pseudonyms.

When neither a manifest nor ``--subject-regex`` names an image's subject, its DICOM PatientID
does; left as is, the PatientID would reach every table and the report, even the ``--no-images``
one meant for sharing. By default each such subject is written as ``subj-`` and the first 16 hex
digits of HMAC-SHA256(key, PatientID): equal PatientIDs get equal pseudonyms across the training,
holdout and synthetic sets, so leave-one-subject-out and same-patient checks are unchanged.

The key is derived from the real images themselves: their PatientIDs and SOPInstanceUIDs (the
training and holdout sets', else the synthetic set's). It is never written. A salt stored in
summary.json beside the pseudonyms would let anyone who holds the outputs confirm a guessed
PatientID (membership inference, the leak this tool exists to find); this key is known only to
whoever holds the images. It is the same for every scan of the same real images, so tables are
identical across reruns and pseudonyms can be compared across scans of one training set.
``--keep-subject-ids`` writes PatientIDs in the clear.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import replace

from .images import ImageSet

PREFIX = "subj-"
DIGITS = 16  # 64 bits: a collision among a million patients has odds of about 3 in 100,000
_DOMAIN = b"replicheck-subject-pseudonym-1"


def pseudonymise(sets: dict[str, ImageSet], *, keep: bool = False) -> dict[str, ImageSet]:
    """``sets`` with every subject that came from a DICOM PatientID replaced by its pseudonym
    (unchanged with ``keep``, or when no subject came from DICOM)."""
    if keep or not any(ref.subject_origin == "dicom" for s in sets.values() for ref in s.refs):
        return sets
    key = _key(sets)
    return {role: replace(image_set, refs=tuple(
        replace(ref, subject=pseudonym(key, ref.subject)) if ref.subject_origin == "dicom" else ref
        for ref in image_set.refs)) for role, image_set in sets.items()}


def pseudonym(key: bytes, patient: str) -> str:
    return PREFIX + hmac.new(key, patient.encode("utf-8"), hashlib.sha256).hexdigest()[:DIGITS]


def describe(sets: dict[str, ImageSet], *, keep: bool) -> dict:
    """summary.json's record of where subjects came from and how DICOM ones were written."""
    origins: dict[str, int] = {}
    for image_set in sets.values():
        for ref in image_set.refs:
            origins[ref.subject_origin] = origins.get(ref.subject_origin, 0) + 1
    from_dicom = origins.get("dicom", 0)
    written = "not applicable" if not from_dicom else ("in the clear (--keep-subject-ids)" if keep else
                                                      f"pseudonym {PREFIX}HMAC-SHA256[:{DIGITS}], key not stored")
    return {"origins": dict(sorted(origins.items())), "dicom_patient_ids": written,
            "dicom_tags_read": list(DICOM_TAGS_READ)}


# Every DICOM attribute replicheck reads (discovery, pixels, intensity, spacing). Only PatientID can
# reach an output, and only as a pseudonym by default; SOPInstanceUID only keys the pseudonyms.
DICOM_TAGS_READ = ("PatientID", "SOPInstanceUID", "SeriesInstanceUID", "Modality", "Rows", "Columns",
                   "SamplesPerPixel", "PhotometricInterpretation", "NumberOfFrames", "ImageOrientationPatient",
                   "ImagePositionPatient", "PixelSpacing", "SliceThickness", "RescaleSlope", "RescaleIntercept",
                   "TransferSyntaxUID", "PixelData", "FloatPixelData", "DoubleFloatPixelData",
                   # multi-frame files, for display orientation only
                   "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence", "PlaneOrientationSequence",
                   "PlanePositionSequence")


def _key(sets: dict[str, ImageSet]) -> bytes:
    real = [s for role, s in sets.items() if role != "synthetic"]
    material = sorted({(ref.patient, ref.uid) for s in real for ref in s.refs if ref.subject_origin == "dicom"})
    if not material:
        material = sorted({(ref.patient, ref.uid) for s in sets.values() for ref in s.refs
                           if ref.subject_origin == "dicom"})
    digest = hashlib.sha256(_DOMAIN)
    for patient, uid in material:
        digest.update(patient.encode("utf-8") + b"\0" + uid.encode("utf-8") + b"\0")
    return digest.digest()
