"""No DICOM identifier reaches an output by default (issue #19): subjects taken from PatientIDs
are written as pseudonyms that keep subjects apart and together exactly as the PatientIDs do;
``--keep-subject-ids`` writes them in the clear."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import perturb
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from test_cli import run

from replicheck import pseudonyms
from replicheck.collect import discover_inputs
from replicheck.config import Reading


def _write_dicom(path, pixels: np.ndarray, patient: str, name: str, study: str, series: str) -> str:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    uid = generate_uid()
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, uid
    ds.PatientID, ds.PatientName, ds.PatientBirthDate = patient, name, "19700101"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = pixels.astype(np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return uid


@pytest.fixture(scope="module")
def dicom_sets(ctich, tmp_path_factory):
    """Training, holdout and synthetic DICOM slices of CT-ICH patients, each file carrying its
    patient's made-up PatientID, name and UIDs; the synthetic set holds copies of training slices."""
    root = tmp_path_factory.mktemp("dicom-ids")
    images, patients = ctich["flat_brain"], ctich["flat_patient"]
    unique = np.unique(patients)
    rng = np.random.default_rng(3)
    secrets: list[str] = []
    sources = {}

    def write(role: str, index: int, pixels: np.ndarray, patient: int) -> None:
        patient_id, name = f"MRN{9_000_000 + int(patient)}", f"Doe^Patient{int(patient)}"
        study, series = f"1.2.826.0.1.3680043.{int(patient)}.1", f"1.2.826.0.1.3680043.{int(patient)}.2"
        hu = pixels.astype(np.float32) / 255.0 * 400.0 - 160.0 + 1024.0  # the 8-bit window back to stored values
        uid = _write_dicom(root / role / f"img{index:03d}.dcm", np.round(hu), patient_id, name, study, series)
        secrets.extend([patient_id, name, study, series, uid])

    for patient in unique[:8]:
        for i in np.flatnonzero(patients == patient)[::6][:4]:
            write("train", i, images[i], patient)
            sources[f"img{i:03d}.dcm"] = f"MRN{9_000_000 + int(patient)}"
    for patient in unique[8:14]:
        for i in np.flatnonzero(patients == patient)[::6][:3]:
            write("holdout", i, images[i], patient)
    copies = list(sources)[::5]
    for n, name in enumerate(copies):
        i = int(name[3:6])
        write("synth", 500 + n, perturb(images[i], rng), patients[i])
    for n, i in enumerate(np.flatnonzero(np.isin(patients, unique[14:16]))[::8][:4]):
        write("synth", 600 + n, images[i], patients[i])
    return root, sorted(set(secrets)), {f"img{500 + n:03d}.dcm": sources[name] for n, name in enumerate(copies)}


def _output_text(out) -> str:
    return "\n".join(path.read_bytes().decode("latin-1") for path in sorted(out.iterdir()) if path.is_file())


@pytest.mark.parametrize("keep", [False, True], ids=["default", "keep-subject-ids"])
def test_no_dicom_identifier_reaches_a_no_images_report_or_any_table(dicom_sets, tmp_path, keep):
    root, secrets, copied_from = dicom_sets
    out = tmp_path / "shared"
    done = run("scan", root / "train", root / "synth", "--holdout", root / "holdout", "--out", out, "--no-images",
               "--quiet", *(["--keep-subject-ids"] if keep else []))
    assert done.returncode == 0, done.stderr
    text = _output_text(out)
    found = [secret for secret in secrets if secret in text]
    if keep:  # the check sees identifiers where they are: PatientIDs in the clear, nothing else
        assert found and all(secret.startswith("MRN") for secret in found), found
        return
    assert found == [], f"{len(found)} of {len(secrets)} identifiers leaked, e.g. {found[:3]}"
    summary = pd.read_json(out / "summary.json", typ="series")
    assert summary["subject_ids"]["origins"] == {"dicom": len(list(root.rglob("*.dcm")))}
    assert "PatientID" in summary["subject_ids"]["dicom_tags_read"]
    table = pd.read_csv(out / "synthetic.csv")
    training = pd.read_csv(out / "training.csv")
    assert training["subject"].str.fullmatch(r"subj-[0-9a-f]{16}").all()
    assert training["subject"].nunique() == 8  # equal PatientIDs, equal pseudonyms; different ones stay apart
    # A copy is found, and its nearest training image's pseudonym is its patient's
    pseudonym_of = training.groupby("subject")["id"].apply(set)
    for copy, patient in copied_from.items():
        row = table.set_index("id").loc[copy]
        assert bool(row["replica"]), copy
        assert row["subject"] == row["voxel_nearest_subject"]
        assert row["voxel_nearest"] in pseudonym_of[row["subject"]]


def test_pseudonyms_are_the_same_on_every_rerun_and_clear_on_request(dicom_sets):
    root, secrets, _ = dicom_sets
    sources = (root / "train", root / "synth", root / "holdout")
    first = discover_inputs(*sources, Reading(), slices=False)
    again = discover_inputs(*sources, Reading(), slices=False)
    clear = discover_inputs(*sources, Reading(keep_subject_ids=True), slices=False)
    subjects = {role: [ref.subject for ref in image_set.refs] for role, image_set in first.items()}
    assert subjects == {role: [ref.subject for ref in image_set.refs] for role, image_set in again.items()}
    assert {ref.subject for ref in clear["training"].refs} <= set(secrets)
    mapping = {a.subject: b.subject for role in first for a, b in zip(clear[role].refs, first[role].refs)}
    assert len(set(mapping.values())) == len(mapping)  # one pseudonym per PatientID, across all three sets


def test_the_key_depends_on_the_images_not_only_the_patient_ids():
    """Knowing a PatientID is not enough to compute its pseudonym: the key holds the images' UIDs."""
    from replicheck.images import ImageSet
    from replicheck.records import ImageRef

    def sets(uid: str):
        ref = ImageRef(id="a", subject="MRN1", source="a.dcm", reader="dicom", shape=(8, 8), patient="MRN1", uid=uid,
                       subject_origin="dicom")
        return {"training": ImageSet("training", "t", (ref,))}

    one, other = pseudonyms.pseudonymise(sets("1.2.3")), pseudonyms.pseudonymise(sets("1.2.4"))
    assert one["training"].refs[0].subject != other["training"].refs[0].subject
    assert one["training"].refs[0].subject.startswith("subj-")
    assert pseudonyms.pseudonymise(sets("1.2.3"), keep=True)["training"].refs[0].subject == "MRN1"
