// Reading the DICOM JSON model (PS3.18 Annex F): values by tag, person names, and the
// functional groups of enhanced multi-frame objects (PS3.3 C.7.6.16).

export const TAG = {
  PatientName: "00100010",
  PatientID: "00100020",
  PatientBirthDate: "00100030",
  PatientSex: "00100040",
  StudyDate: "00080020",
  StudyDescription: "00081030",
  Modality: "00080060",
  SeriesNumber: "00200011",
  SeriesDescription: "0008103E",
  SeriesInstanceUID: "0020000E",
  SOPInstanceUID: "00080018",
  InstanceNumber: "00200013",
  ImagePositionPatient: "00200032",
  ImageOrientationPatient: "00200037",
  SamplesPerPixel: "00280002",
  PhotometricInterpretation: "00280004",
  NumberOfFrames: "00280008",
  Rows: "00280010",
  Columns: "00280011",
  BitsAllocated: "00280100",
  BitsStored: "00280101",
  HighBit: "00280102",
  PixelRepresentation: "00280103",
  WindowCenter: "00281050",
  WindowWidth: "00281051",
  RescaleIntercept: "00281052",
  RescaleSlope: "00281053",
  VOILUTFunction: "00281056",
  FrameTime: "00181063",
  CineRate: "00180040",
  RecommendedDisplayFrameRate: "00082144",
  FloatPixelData: "7FE00008",
  DoubleFloatPixelData: "7FE00009",
  SharedFunctionalGroupsSequence: "52009229",
  PerFrameFunctionalGroupsSequence: "52009230",
  PixelValueTransformationSequence: "00289145",
  FrameVOILUTSequence: "00289132",
  PlanePositionSlideSequence: "0048021A",
  ColumnPositionInTotalImagePixelMatrix: "0048021E",
  RowPositionInTotalImagePixelMatrix: "0048021F",
  TotalPixelMatrixColumns: "00480006",
  TotalPixelMatrixRows: "00480007",
  DimensionOrganizationType: "00209311",
};

export function values(ds, tag) {
  const element = ds ? ds[tag] : undefined;
  return element && Array.isArray(element.Value) ? element.Value : [];
}

export function first(ds, tag) {
  return values(ds, tag)[0];
}

/** A number (DS and IS are JSON numbers, PS3.18 F.2.3; a string is read leniently). */
export function number(ds, tag, fallback = undefined, index = 0) {
  const value = values(ds, tag)[index];
  const parsed = typeof value === "number" ? value : Number.parseFloat(value);
  return Number.isFinite(parsed) ? parsed : fallback;
}

function personName(value) {
  const name = value.Alphabetic || value.Ideographic || value.Phonetic || "";
  return name.split("^").filter(Boolean).join(" ");
}

/** A value as display text: person names as "Family Given", several values joined. */
export function text(ds, tag) {
  return values(ds, tag)
    .map((value) => (value && typeof value === "object" ? personName(value) : String(value)))
    .join(" \\ ");
}

export function item(ds, tag, index = 0) {
  return values(ds, tag)[index];
}

/**
 * The element `tag` of functional group macro `macro` for frame `index` (0-based): the
 * per-frame group wins over the shared one (PS3.3 C.7.6.16.1); undefined when neither has it.
 */
export function frameGroup(ds, index, macro, tag) {
  const perFrame = item(item(ds, TAG.PerFrameFunctionalGroupsSequence, index), macro);
  if (perFrame && perFrame[tag]) return perFrame;
  const shared = item(item(ds, TAG.SharedFunctionalGroupsSequence), macro);
  if (shared && shared[tag]) return shared;
  return undefined;
}

/** `tag` for frame `index`: from the functional groups of an enhanced object, else top level. */
export function frameNumber(ds, index, macro, tag, fallback = undefined) {
  const group = frameGroup(ds, index, macro, tag);
  return number(group || ds, tag, fallback);
}
